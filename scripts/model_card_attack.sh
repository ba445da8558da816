#!/usr/bin/env bash
# Empirical robustness and the certificate audit of MODEL_CARD.md and the README (issue #16).
#
#   empirical  SmoothAdv's attack on the smoothed classifier (l2 PGD, STEPS steps, EOT noise draws
#              per step, 1 restart), then PREDICT (n = PRED_N, alpha 0.001) at the attacked point, for
#              RS / DDS / DiffSmooth (m 5, local sigma 0.25, soft) at sigma 0.25 and 0.5, eps 0.25 and
#              0.5, on the first MAX test images (the model card's images, same seed)
#   tables     per sigma, empirical robust accuracy beside certified accuracy (the model card's grid
#              files, read on the attacked images) with standard errors, and the plot of both
#   audit      every certified-correct row of the model card's sigma-0.5 grid runs (RS, DDS,
#              DiffSmooth soft; first AUDIT_MAX images) attacked inside 0.95 x its radius, then p_c
#              estimated with fresh samples: flipped predictions and p_c below Cohen's bound counted
#
# Usage: OMP_NUM_THREADS=1 scripts/model_card_attack.sh [empirical|tables|audit ...]   (default: all three)
#        SIGMAS=0.25 scripts/model_card_attack.sh empirical   (one sigma: run SIGMAS=0.25 and SIGMAS=0.5
#                                                             at once, one per core)
# Needs scripts/model_card_certify.sh grid first for the audit and the tables. Resumable; results go to $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-model-card-runs}; MAX=${MAX:-100}; AUDIT_MAX=${AUDIT_MAX:-125}; STEPS=${STEPS:-20}; EOT=${EOT:-8}
PRED_N=${PRED_N:-1000}; BATCH=${BATCH:-700}; SIGMAS=${SIGMAS:-"0.25 0.5"}
DS=.venv/bin/diffsmooth
parts=("$@"); (( ${#parts[@]} )) || parts=(empirical tables audit)

for part in "${parts[@]}"; do
  case $part in
    empirical)
      for sigma in $SIGMAS; do
        for method in rs dds diffsmooth; do
          $DS attack --dataset fashion-mnist --method "$method" --sigma "$sigma" --m 5 --local-sigma 0.25 \
              --eps 0.25 0.5 --steps "$STEPS" --eot "$EOT" --restarts 1 --n "$PRED_N" --alpha 0.001 \
              --batch "$BATCH" --seed 0 --max "$MAX" --quiet --resume --out-dir "$OUT/attack_${method}_sigma$sigma"
        done
      done ;;
    tables)
      for sigma in $SIGMAS; do
        g=$(printf '%g' "$sigma")
        .venv/bin/diffsmooth analyze "$OUT"/attack_{rs,dds,diffsmooth}_sigma"$sigma" \
            "$OUT/sigma$sigma"/{rs_sigma$g,dds_sigma$g,diffsmooth_sigma${g}_m5_ls0.25_soft}.tsv --errors \
            --plot "$OUT/robust_sigma$sigma.png" --overwrite --title "Fashion-MNIST, sigma=$sigma, first $MAX images"
      done ;;
    audit)
      for run in rs_sigma0.5 dds_sigma0.5 diffsmooth_sigma0.5_m5_ls0.25_soft; do
        $DS attack --audit "$OUT/sigma0.5/$run.tsv" --max "$AUDIT_MAX" --steps "$STEPS" --eot "$EOT" --n "$PRED_N" \
            --batch "$BATCH" --seed 1 --quiet --out "$OUT/audit_$run.tsv" 2>&1 | tee "$OUT/audit_$run.txt"
      done ;;
    *) echo "unknown part $part: empirical, tables or audit" >&2; exit 2 ;;
  esac
done
