#!/usr/bin/env bash
# The certified-accuracy table of MODEL_CARD.md: first MAX Fashion-MNIST test images, shipped
# models, RS / DDS / DiffSmooth (m=5, local_sigma 0.25, soft and hard) at each sigma, all four
# certified as one grid per sigma (one purification per noisy batch; every configuration's rows
# equal a separate run's). On 2 CPU cores n has to stay small (N below); on a GPU use N=10000 N0=100.
# Resumable: rerun the same command after an interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-model-card-runs}; N=${N:-100}; N0=${N0:-20}; MAX=${MAX:-500}; BATCH=${BATCH:-600}
SIGMAS=${SIGMAS:-"0.25 0.5"}
mkdir -p "$OUT"
for sigma in $SIGMAS; do
  .venv/bin/diffsmooth certify --dataset fashion-mnist --sigma "$sigma" --method rs dds diffsmooth \
      --m 5 --local-sigma 0.25 --vote soft hard --n0 "$N0" --n "$N" --alpha 0.001 --batch "$BATCH" \
      --max "$MAX" --seed 0 --resume --out-dir "$OUT/sigma$sigma"
  .venv/bin/diffsmooth analyze "$OUT/sigma$sigma" --radii 0 0.25 0.5 0.75 1.0 1.5 --overwrite \
      --plot "$OUT/certified_$sigma.png" --title "sigma=$sigma"
done
