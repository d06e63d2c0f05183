"""``python -m qama``: the ``qama`` command line."""

import sys

from qama.cli import main

sys.exit(main())
