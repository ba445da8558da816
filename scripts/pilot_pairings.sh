#!/usr/bin/env bash
# Issue #32's choices, made on TRAINING images (never on the test images the model card reports): which
# local classifier DiffSmooth pairs with at each sigma, beside RS with every training method and DDS.
# One grid per sigma (one noise stream, one purification per batch): RS x {gaussian, consistency,
# smoothadv, smoothmix where shipped}, DDS, DiffSmooth (m 5, soft) x {gaussian, consistency, smoothadv}
# at each local sigma in LOCALS_<sigma>, plus any extra local classifiers given as LOCAL_SIGMA=PATH in
# EXTRA. Sequential sampling decides radii 0, sigma/2, ..., 5 sigma/2 with at most N_MAX samples.
#
# Usage: OMP_NUM_THREADS=1 scripts/pilot_pairings.sh SIGMA [table]
#        CLS=/work/ckpt (classifiers not shipped yet: CLS/fmnist_cnn_lite_NAME/model), OUT=... (results)
set -euo pipefail
cd "$(dirname "$0")/.."
sigma=${1:?usage: $0 SIGMA [table]}
OUT=${OUT:-pilot-runs}; N_MAX=${N_MAX:-2000}; MAX=${MAX:-100}; SKIP=${SKIP:-600}; SEED=${SEED:-3}
CLS=${CLS:-}; EXTRA=${EXTRA:-}
s=$(printf '%.2f' "$sigma")
declare -A LOCALS=([0.25]="0.12 0.25" [0.50]="0.12 0.25" [1.00]="0.25 0.50")
source scripts/shipped_models.sh  # model NAME, table_radii SIGMA

rs=() local=()
for method in gaussian consistency smoothadv smoothmix; do
  c=$(model "fmnist_cnn_${method}_$s") && [[ -n $c ]] && rs+=("$c")
done
for ls in ${LOCALS[$s]}; do
  l=$(printf '%.2f' "$ls")
  for method in gaussian consistency smoothadv; do
    c=$(model "fmnist_cnn_${method}_$l") && [[ -n $c ]] && local+=("$ls=$c")
  done
done
radii=($(table_radii "$sigma"))
dir=$OUT/pilot_sigma$sigma
if [[ ${2:-} != table ]]; then
  # shellcheck disable=SC2086  # EXTRA holds several items
  .venv/bin/diffsmooth certify --method rs dds diffsmooth --split train --skip "$SKIP" --max "$MAX" --seed "$SEED" \
      --sigma "$sigma" --rs-classifier "${rs[@]}" --local-classifier "${local[@]}" $EXTRA --local-m 5 --vote soft \
      --n0 100 --sampling sequential --n-max "$N_MAX" --radii "${radii[@]}" --batch 1000 --resume --quiet \
      --out-dir "$dir"
fi
.venv/bin/diffsmooth analyze "$dir" --radii "${radii[@]}" --errors
