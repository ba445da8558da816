#!/usr/bin/env bash
# The certified-accuracy table of MODEL_CARD.md: first 500 Fashion-MNIST test images, shipped
# models, RS / DDS / DiffSmooth (m=5, local_sigma 0.25, soft and hard) at sigma 0.25 and 0.5.
# On 2 CPU cores n had to stay small (N below); on a GPU use N=10000 N0=100.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-model-card-runs}; N=${N:-100}; N0=${N0:-20}; MAX=${MAX:-500}; BATCH=${BATCH:-600}
mkdir -p "$OUT"
common=(--dataset fashion-mnist --n0 "$N0" --n "$N" --alpha 0.001 --batch "$BATCH" --max "$MAX" --seed 0 --resume)
run() { .venv/bin/diffsmooth certify --sigma "$1" "${common[@]}" --out "$OUT/$2" "${@:3}"; }
# Cheapest and most informative first, so that a cut-short run still fills whole columns.
for sigma in 0.25 0.5; do run $sigma rs_$sigma.tsv --method rs; done
for sigma in 0.25 0.5; do run $sigma dds_$sigma.tsv --method dds; done
for vote in soft hard; do
  for sigma in 0.25 0.5; do
    run $sigma diffsmooth_${vote}_$sigma.tsv --method diffsmooth --m 5 --local-sigma 0.25 --vote $vote
  done
done
for sigma in 0.25 0.5; do
  .venv/bin/diffsmooth analyze "$OUT"/rs_$sigma.tsv "$OUT"/dds_$sigma.tsv "$OUT"/diffsmooth_soft_$sigma.tsv \
      "$OUT"/diffsmooth_hard_$sigma.tsv --labels "RS" "DDS" "DiffSmooth soft" "DiffSmooth hard" \
      --radii 0 0.25 0.5 0.75 1.0 1.5 --plot "$OUT/certified_$sigma.png" --title "sigma=$sigma"
done
