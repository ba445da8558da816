#!/usr/bin/env bash
# The one-command GPU check (issue #29): the gpu-marked tests, then benchmarks/throughput.py on CUDA,
# which writes its device's section of benchmarks/RESULTS.md. Sized for a lent GPU's short lease:
# at most 8 minutes (tests <= 3, throughput <= 5). Logs and the updated RESULTS.md go to $OUT
# (default gpu-check-output/), so that they come back from a remote machine.
#
# Usage: scripts/gpu_check.sh            on a machine with CUDA
#        scripts/gpu_check.sh --dry-run  the same steps on the CPU, tiny: collects the gpu tests and
#                                        runs the throughput script on Fashion-MNIST for a second per
#                                        path, writing only into $OUT (to know the script works)
# The Python: .venv/bin/python where it exists, else python3 (a GPU image's own, with PyTorch);
# this checkout's src/ comes first on the path, so nothing needs installing.
set -euo pipefail
cd "$(dirname "$0")/.."
dry=${1:-}
[[ -z $dry || $dry == --dry-run ]] || { echo "usage: $0 [--dry-run]" >&2; exit 2; }
PY=${PY:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-gpu-check-output}
mkdir -p "$OUT"
start=$(date +%s)
"$PY" -c 'import sys, torch; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda {torch.cuda.is_available()}")' \
    | tee "$OUT/environment.log"

if [[ $dry == --dry-run ]]; then
    "$PY" -m pytest -q -p no:cacheprovider -m gpu --collect-only tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.log"
    cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
    "$PY" benchmarks/throughput.py --configs fmnist --device cpu --seconds 1 --ref-batches 16 --fast-batch 64 \
        --agreement-samples 64 --results "$OUT/RESULTS.md" 2>&1 | tee "$OUT/throughput.log"
else
    "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: run with --dry-run")'
    timeout 180 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tee "$OUT/gpu_tests.log"
    timeout 300 "$PY" benchmarks/throughput.py --device cuda --seconds 5 2>&1 | tee "$OUT/throughput.log"
    cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
fi
echo "gpu check done in $(( $(date +%s) - start )) s; logs and RESULTS.md in $OUT" | tee -a "$OUT/environment.log"
