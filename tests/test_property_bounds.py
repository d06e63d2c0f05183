"""#16 "done when": random field types and values through the config.json and manifest readers and the
command line's numeric options give a one-line error or a correct result, never a traceback, and never
more memory than a cap (``tests/bounded_properties.py``, run under ``resource.setrlimit``)."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAP_BYTES = 3 * 1024**3  # address space: the imports (torch, faiss) take about 1.5 GiB of it


def _cap() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CAP_BYTES, CAP_BYTES))


def test_random_fields_and_numbers_under_a_memory_cap(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tests.bounded_properties", str(tmp_path), "60"],  # -m: this checkout's qama,
        cwd=ROOT,
        preexec_fn=_cap,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-3000:] + proc.stderr[-3000:]
