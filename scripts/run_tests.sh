#!/usr/bin/env bash
# Runs the test suite with the project's venv. GPU tests need CUDA: where there is none
# they are deselected by name here (and the count printed), never skipped silently.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
if "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    exec "$py" -m pytest "$@"
fi
echo "no CUDA device: deselecting tests marked 'gpu'"
exec "$py" -m pytest -m "not gpu" "$@"
