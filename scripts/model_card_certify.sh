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
#   cardrs    issue #32's RS rows per sigma in SIGMAS, as one sequential grid (radii 0, sigma/2 ...
#             5 sigma/2 decided with at most N_MAX samples) into OUT/card<sigma>/rs: every classifier
#             trained for sigma (gaussian, consistency, smoothadv, smoothmix)
#   card      the purified rows, one sequential grid per sigma (one purification per noisy batch; the
#             same seed, so the same noise per image as cardrs) into OUT/card<sigma>/purified: DDS with
#             the clean classifier and with it fine-tuned on purified images (clean_purified_<sigma>),
#             DiffSmooth (m 5, soft) with each local classifier of LOCAL_<sigma> (LOCAL_SIGMA=NAME items;
#             default: gaussian, consistency and smoothadv at local sigma 0.25 (0.5 at sigma 1.0) and the
#             purifier-aware purified_<sigma>); CLS: a folder of trained-but-unshipped models
#             (CLS/fmnist_cnn_lite_NAME/model)
#   cardtables  the card's tables (short labels rs_<training>, dds, dds_finetune, diffsmooth_<local>):
#             certified accuracy with errors and the paired differences of the declared best DiffSmooth
#             row (BEST_<sigma>, default diffsmooth_smoothadv) against every RS row, then the
#             purifier-aware and fine-tuned rows against what they started from; plot OUT/card_sigma<sigma>.png
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
N_MAX=${N_MAX:-2000}; CLS=${CLS:-}
# the card's runs: eager (--compile recompiles for the varying batches of sequential sampling: no gain)
card=("${dev[@]}" --dataset fashion-mnist --n0 "$N0" --alpha 0.001 --batch "$BATCH" --seed 0 --resume --quiet)
source scripts/shipped_models.sh  # model NAME, table_radii SIGMA

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
        radii=($(table_radii "$sigma"))
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
    cardrs|card)
      for sigma in $SIGMAS; do
        s=$(printf '%.2f' "$sigma"); key=LOCAL_${s/./_}
        radii=($(table_radii "$sigma"))
        seq=(--sampling sequential --n-max "$N_MAX" --radii "${radii[@]}" --max-images "$MAX")
        mkdir -p "$OUT/card$sigma"
        if [[ $part == cardrs ]]; then
          rs=()
          for method in gaussian consistency smoothadv smoothmix; do m=$(model "fmnist_cnn_${method}_$s"); [[ -n $m ]] && rs+=("$m"); done
          "${DS[@]}" certify "${card[@]}" --sigma "$sigma" --method rs --rs-classifier "${rs[@]}" "${seq[@]}" \
              --out-dir "$OUT/card$sigma/rs"
          continue
        fi
        dds=() local=()
        for name in fmnist_cnn_clean "fmnist_cnn_clean_purified_$s"; do m=$(model "$name"); [[ -n $m ]] && dds+=("$m"); done
        ls=0.25; [[ $s == 1.00 ]] && ls=0.5
        default="$ls=fmnist_cnn_gaussian_$(printf '%.2f' $ls) $ls=fmnist_cnn_consistency_$(printf '%.2f' $ls)"
        default+=" $ls=fmnist_cnn_smoothadv_$(printf '%.2f' $ls) $ls=fmnist_cnn_purified_$s"
        for item in ${!key:-$default}; do m=$(model "${item#*=}"); [[ -n $m ]] && local+=("${item%%=*}=$m"); done
        "${DS[@]}" certify "${card[@]}" --sigma "$sigma" --method dds diffsmooth --dds-classifier "${dds[@]}" \
            --local-classifier "${local[@]}" --local-m 5 --vote soft "${seq[@]}" --out-dir "$OUT/card$sigma/purified"
      done ;;
    cardtables)
      for sigma in $SIGMAS; do
        compgen -G "$OUT/card$sigma/*/index.json" > /dev/null || continue
        s=$(printf '%.2f' "$sigma"); key=BEST_${s/./_}
        radii=($(table_radii "$sigma"))
        # the card's rows in its order, with short labels: rs_<training>, dds, dds_finetune, diffsmooth_<local>
        mapfile -t rows < <(.venv/bin/python - "$OUT/card$sigma"/*/ <<'PY'
import re, sys
from diffsmooth.results import read_index
order = ["rs_gaussian", "rs_consistency", "rs_smoothadv", "rs_smoothmix", "dds", "dds_finetune",
         "diffsmooth_gaussian", "diffsmooth_consistency", "diffsmooth_smoothadv", "diffsmooth_purified"]
found = {}
for folder in sys.argv[1:]:
    for e in read_index(folder):
        method = e["label"].split("_", 1)[0]
        clf = re.sub(r"^lite_|_\d\.\d\d(-model)?$", "", e["label"].split("fmnist_cnn_")[-1])
        dds = {"clean": "dds", "clean_purified": "dds_finetune"}
        short = dds.get(clf, f"dds_{clf}") if method == "dds" else f"{method}_{clf}"
        found[short] = e["path"]
for short in sorted(found, key=lambda k: order.index(k) if k in order else len(order)):
    print(short, found[short])
PY
)
        labels=() files=()
        for row in "${rows[@]}"; do labels+=("${row%% *}"); files+=("${row#* }"); done
        best=${!key:-diffsmooth_smoothadv}  # declared on training images (MODEL_CARD.md, "Local sigma")
        paired=()
        for l in "${labels[@]}"; do [[ $l == rs_* ]] && paired+=("$best,$l"); done
        # the purifier-aware local classifier and the fine-tuned DDS against what they started from
        for pair in diffsmooth_purified,rs_smoothadv diffsmooth_purified,diffsmooth_smoothadv \
                    diffsmooth_smoothadv,diffsmooth_gaussian dds_finetune,dds "$best,dds_finetune"; do
          [[ " ${labels[*]} " == *" ${pair%,*} "* && " ${labels[*]} " == *" ${pair#*,} "* ]] && paired+=("$pair")
        done
        echo "### sigma = $sigma (n_max = $N_MAX, $MAX images)"
        .venv/bin/diffsmooth analyze "${files[@]}" --labels "${labels[@]}" --radii "${radii[@]}" --errors \
            --paired "${paired[@]}" --plot "$OUT/card_sigma$sigma.png" --overwrite \
            --title "Fashion-MNIST, sigma=$sigma, n_max=$N_MAX, $MAX images"
      done ;;
    *) echo "unknown part $part: grid, trained, denoised, densepure, tables, cardrs, card or cardtables" >&2; exit 2 ;;
  esac
done
