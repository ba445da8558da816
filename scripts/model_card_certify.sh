#!/usr/bin/env bash
# The certified-accuracy tables of MODEL_CARD.md: the first MAX Fashion-MNIST test images, shipped
# models, alpha 0.001, the same seed (so the same smoothing noise per image) for every method.
#
#   grid      RS / DDS / DiffSmooth (m 5, local sigma 0.25, soft and hard) at each sigma in SIGMAS,
#             certified as one grid per sigma (one purification per noisy batch; each configuration's
#             rows equal a separate run's); n = N
#   trained   RS with the Consistency, SmoothAdv and SmoothMix classifiers at each sigma in BASELINE_SIGMAS
#             (0.25 and 0.5, the sigmas they are shipped for); n = N
#   denoised  Denoised Smoothing (the shipped DnCNN + the clean classifier) at each BASELINE_SIGMAS; n = N
#   densepure DensePure (RUNS reverse runs of STEPS steps vote) at each BASELINE_SIGMAS: on DP_MAX images
#             with n0 = 32, n = DP_N only (each sample costs RUNS x STEPS UNet calls); then RS / DDS /
#             DiffSmooth (soft) with the same settings on the same images, for the comparison
#   tables    print the model card's tables from what the parts wrote: certified accuracy with
#             standard errors, and paired differences DiffSmooth (soft) - RS / - DDS / - Denoised
#             Smoothing per radius
#
# Usage: OMP_NUM_THREADS=1 scripts/model_card_certify.sh [PART ...]   (default: the four runs, then tables)
#        SIGMAS="0.5" scripts/model_card_certify.sh grid               (one sigma; run two at once on 2 cores)
#        PROCS=2 SIGMAS="0.5" scripts/model_card_certify.sh grid       (one run on 2 cores: torchrun, each
#                                                                       process a share of the images)
#        BASELINE_SIGMAS=0.25 scripts/model_card_certify.sh densepure  (one sigma; the other on the other core)
# Resumable: rerun the same command after an interruption. Results go to $OUT (not in the repo).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-model-card-runs}; N=${N:-2000}; N0=${N0:-100}; MAX=${MAX:-500}; BATCH=${BATCH:-1000}
SIGMAS=${SIGMAS:-"0.25 0.5 1.0"}; BASELINE_SIGMAS=${BASELINE_SIGMAS:-"0.25 0.5"}
DP_MAX=${DP_MAX:-100}; DP_N=${DP_N:-200}; RUNS=${RUNS:-3}; STEPS=${STEPS:-4}
PROCS=${PROCS:-1}
# Under torchrun the long spellings --num-samples / --max-images stand for --n / --max (torchrun's own
# parser reads --n and --max as abbreviations of its options); each image's noise is seeded by
# (seed, idx), so the rows equal a one-process run's.
if (( PROCS > 1 )); then DS=(.venv/bin/torchrun --standalone --nproc-per-node "$PROCS" -m diffsmooth); dev=(--device cpu)
else DS=(.venv/bin/diffsmooth); dev=(); fi
# --compile: the base compiled once at BATCH (a divisor of N, so every estimation batch runs compiled);
# 1.4x faster than eager for the DiffSmooth base on this CPU, outputs equal to 2e-7.
common=("${dev[@]}" --dataset fashion-mnist --n0 "$N0" --alpha 0.001 --batch "$BATCH" --seed 0 --compile default --resume --quiet)
mkdir -p "$OUT"
parts=("$@"); (( ${#parts[@]} )) || parts=(grid trained denoised densepure tables)

for part in "${parts[@]}"; do
  case $part in
    grid)
      for sigma in $SIGMAS; do
        "${DS[@]}" certify "${common[@]}" --sigma "$sigma" --method rs dds diffsmooth --local-m 5 --local-sigma 0.25 \
            --vote soft hard --num-samples "$N" --max-images "$MAX" --out-dir "$OUT/sigma$sigma"
      done ;;
    trained)
      for sigma in $BASELINE_SIGMAS; do
        sigma=$(printf '%.2f' "$sigma")  # the classifiers' names: 0.5 -> 0.50
        for method in consistency smoothadv smoothmix; do
          "${DS[@]}" certify "${common[@]}" --sigma "$sigma" --method rs --classifier "fmnist_cnn_${method}_$sigma" \
              --num-samples "$N" --max-images "$MAX" --out "$OUT/rs_${method}_sigma$sigma.tsv"
        done
      done ;;
    denoised)
      for sigma in $BASELINE_SIGMAS; do
        "${DS[@]}" certify "${common[@]}" --sigma "$sigma" --method denoised --num-samples "$N" --max-images "$MAX" \
            --out "$OUT/denoised_sigma$sigma.tsv"
      done ;;
    densepure)
      for sigma in $BASELINE_SIGMAS; do
        "${DS[@]}" certify "${common[@]}" --sigma "$sigma" --method densepure --runs "$RUNS" --steps "$STEPS" \
            --num-samples "$DP_N" --n0 32 --max-images "$DP_MAX" --out "$OUT/densepure_sigma$sigma.tsv"
        "${DS[@]}" certify "${dev[@]}" --dataset fashion-mnist --n0 32 --alpha 0.001 --batch $((DP_N + 32)) --seed 0 \
            --resume --quiet --sigma "$sigma" --method rs dds diffsmooth --local-m 5 --local-sigma 0.25 --vote soft \
            --num-samples "$DP_N" --max-images "$DP_MAX" --out-dir "$OUT/dpref_sigma$sigma"
      done ;;
    tables)
      for sigma in $SIGMAS; do
        [[ -f $OUT/sigma$sigma/index.json ]] || continue
        echo "### sigma = $sigma"
        files=("$OUT/sigma$sigma")
        # DensePure (other n, fewer images) gets its own comparison below
        for extra in "$OUT"/rs_*_sigma"$sigma"*.tsv "$OUT/denoised_sigma$sigma.tsv"; do
          [[ -f $extra ]] && files+=("$extra")
        done
        g=$(printf '%g' "$sigma")  # labels write sigma as %g: 1.0 -> 1
        # radii 0, sigma/2, ..., 5 sigma/2: n = 2,000 and alpha 0.001 certify at most 2.70 sigma
        radii=($(awk -v s="$sigma" 'BEGIN { for (k = 0; k <= 5; k++) printf "%g ", k * s / 2 }'))
        ours=diffsmooth_sigma${g}_m5_ls0.25_soft
        pairs=("$ours,rs_sigma$g" "$ours,dds_sigma$g")
        [[ -f $OUT/denoised_sigma$sigma.tsv ]] && pairs+=("$ours,denoised_sigma$sigma")
        .venv/bin/diffsmooth analyze "${files[@]}" --radii "${radii[@]}" --errors --paired "${pairs[@]}" \
            --plot "$OUT/certified_sigma$sigma.png" --overwrite --title "Fashion-MNIST, sigma=$sigma, n=$N, $MAX images"
        if [[ -f $OUT/densepure_sigma$sigma.tsv && -f $OUT/dpref_sigma$sigma/index.json ]]; then
          echo "### DensePure beside RS / DDS / DiffSmooth, n = $DP_N, $DP_MAX images, sigma = $sigma"
          dp=densepure_sigma$sigma
          .venv/bin/diffsmooth analyze "$OUT/dpref_sigma$sigma" "$OUT/$dp.tsv" --radii "${radii[@]:0:4}" --errors \
              --paired "$dp,rs_sigma$g" "$dp,dds_sigma$g" "$ours,$dp"
        fi
      done ;;
    *) echo "unknown part $part: grid, trained, denoised, densepure or tables" >&2; exit 2 ;;
  esac
done
