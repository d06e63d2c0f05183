#!/usr/bin/env bash
# Create .venv and install qama with every extra the tests use. Idempotent; needs Python >= 3.10.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: a bare `torch` requirement could pull a multi-GB CUDA build. On Linux
# without a GPU, TORCH_INDEX=https://download.pytorch.org/whl/cpu picks the small CPU build.
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}" ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
# mteb: for the tests of qama.integrations.mteb (about 10 s and 450 MB more to install).
# lint: ruff and mypy, which .ci/run runs before the tests.
.venv/bin/python -m pip install -q -e ".[offline,test,report,milvus,mteb,lint]"
echo "qama installed in .venv: run .venv/bin/qama --help"
