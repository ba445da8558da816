#!/usr/bin/env bash
# Trains the shipped Fashion-MNIST models from scratch (issues #15, #17, #32): the narrow DDPM (ADM UNet,
# 16 channels, 8 norm groups, 95.9 MFLOP per sample, timesteps focused on the t* range of sigma
# 0.12-1.0, EMA); fifteen fmnist_cnn_lite classifiers (8.3 MFLOP per image) with the same budget for
# every method (same epochs, batch, SGD schedule, seed and initialisation): clean; gaussian 0.12,
# 0.25, 0.5, 1.0; consistency and smoothadv 0.12, 0.25, 0.5 and 1.0; then SmoothMix at 0.25 and 0.5;
# purifier-aware fine-tunes per sigma (below); two small DnCNN denoisers (MSE) for Denoised Smoothing.
# CPU, one thread per process, fixed seeds.
#
# Usage: scripts/train_shipped.sh MODEL   train (or continue) one model: a name listed by `list`
#        scripts/train_shipped.sh queue   every model in the order below, skipping finished ones and
#                                         ones another queue is training (a lock per model): start
#                                         one queue per free core. Re-run after an interruption:
#                                         every model resumes from its state.
#        scripts/train_shipped.sh list    the model names and whether each is finished
#        scripts/train_shipped.sh ship    copy every finished model into src/diffsmooth/weights/ under
#                                         its shipped name (fmnist_ddpm_lite -> fmnist_ddpm,
#                                         fmnist_cnn_lite_X -> fmnist_cnn_X, fmnist_dncnn_S as is)
#        scripts/train_shipped.sh keep MODEL
#                                         copy MODEL's resumable state into training-state/MODEL/ of the
#                                         repository (commit it: a session's machine keeps nothing else;
#                                         at most three times per model, <= 10 MB; removed once the model
#                                         ships); `run` restores it when $CK has none
# Outputs: $CK/NAME/model[.safetensors|.json] (the trained model), $CK/NAME/state (resumable state),
# $CK/NAME.log.
set -euo pipefail
ROOT=${ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$ROOT"
PY=${PY:-.venv/bin/python}
CK=${CK:-/work/ckpt}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}  # this checkout's code, whatever is installed

DDPM=fmnist_ddpm_lite
DDPM_STEPS=${DDPM_STEPS:-40000}
# Issue #41's purifier ladder: the shipped recipe at other base widths (8 norm groups need a multiple
# of 8), trained after every model the card needs; shipped as fmnist_ddpm_w<width>.
LADDER=(fmnist_ddpm_w24_lite fmnist_ddpm_w8_lite)
declare -A DDPM_WIDTH=([fmnist_ddpm_lite]=16 [fmnist_ddpm_w24_lite]=24 [fmnist_ddpm_w8_lite]=8)
# In the order the demo and the model card need them.
CLASSIFIERS=(fmnist_cnn_lite_gaussian_0.50 fmnist_cnn_lite_gaussian_0.25 fmnist_cnn_lite_clean
             fmnist_cnn_lite_gaussian_0.12 fmnist_cnn_lite_gaussian_1.00 fmnist_cnn_lite_consistency_0.50
             fmnist_cnn_lite_smoothadv_0.50 fmnist_cnn_lite_consistency_0.25 fmnist_cnn_lite_smoothadv_0.25
             fmnist_cnn_lite_smoothmix_0.50 fmnist_cnn_lite_smoothmix_0.25
             fmnist_cnn_lite_consistency_0.12 fmnist_cnn_lite_smoothadv_0.12
             fmnist_cnn_lite_consistency_1.00 fmnist_cnn_lite_smoothadv_1.00
             fmnist_cnn_lite_purified_0.50 fmnist_cnn_lite_clean_purified_0.50
             fmnist_cnn_lite_purified_0.25 fmnist_cnn_lite_clean_purified_0.25
             fmnist_cnn_lite_purified_1.00 fmnist_cnn_lite_clean_purified_1.00)
DENOISERS=(fmnist_dncnn_0.50 fmnist_dncnn_0.25)
EPOCHS=${EPOCHS:-10}
# Every budget is sized so that each model trains within one 3-hour session on one core (a session's
# machine keeps nothing outside the repository): classifiers 10 epochs; SmoothMix costs ~9 plain
# epochs per epoch (m = 2 copies, 2 PGD steps): 5 epochs (about the compute of SmoothAdv's 10);
# DnCNN (depth 10, width 32, 0.12 GFLOP per image): 3 epochs of MSE.
declare -A EPOCHS_OF=([fmnist_cnn_lite_smoothmix_0.50]=5 [fmnist_cnn_lite_smoothmix_0.25]=5)
declare -A LR_OF=()
# Issue #32's purifier-aware models fine-tune a shipped classifier for 3 epochs at lr 0.01 on what it
# sees at certification: the DDPM's one-shot purification of x + N(0, sigma^2), 4 draws per training
# image purified once (cached in $CK/purified_<sigma>, shared by the two models of a sigma; the purifier
# is $CK's finished DDPM, else the shipped one).
# - purified_<sigma>: DiffSmooth's local classifier at the card's local sigma (0.25; 0.5 at sigma 1.0),
#   from the SmoothAdv classifier of that local sigma (the pairing the training-image pilots chose at
#   every sigma) with its SmoothAdv loss (the local noise on top);
# - clean_purified_<sigma>: DDS +finetune (Carlini et al.), from the clean classifier, no noise.
for s in 0.25 0.50 1.00; do
  EPOCHS_OF[fmnist_cnn_lite_purified_$s]=3 EPOCHS_OF[fmnist_cnn_lite_clean_purified_$s]=3
  LR_OF[fmnist_cnn_lite_purified_$s]=0.01 LR_OF[fmnist_cnn_lite_clean_purified_$s]=0.01
done
DENOISER_EPOCHS=${DENOISER_EPOCHS:-3}

# Extra options per classifier: method, sigma and the method's hyper-parameters.
declare -A METHOD=(
  [fmnist_cnn_lite_clean]="--method gaussian --sigma 0"
  [fmnist_cnn_lite_gaussian_0.12]="--method gaussian --sigma 0.12"
  [fmnist_cnn_lite_gaussian_0.25]="--method gaussian --sigma 0.25"
  [fmnist_cnn_lite_gaussian_0.50]="--method gaussian --sigma 0.5"
  [fmnist_cnn_lite_gaussian_1.00]="--method gaussian --sigma 1.0"
  [fmnist_cnn_lite_consistency_0.25]="--method consistency --sigma 0.25 --m-train 2 --lbd 10 --eta 0.5"
  [fmnist_cnn_lite_consistency_0.50]="--method consistency --sigma 0.5 --m-train 2 --lbd 10 --eta 0.5"
  [fmnist_cnn_lite_smoothadv_0.25]="--method smoothadv --sigma 0.25 --m-train 1 --epsilon 0.5 --num-steps 2 --warmup 2"
  [fmnist_cnn_lite_smoothadv_0.50]="--method smoothadv --sigma 0.5 --m-train 1 --epsilon 1.0 --num-steps 2 --warmup 2"
  # issue #32: robust local classifiers at local sigma 0.12 and robust RS rows at sigma 1.0 (the
  # recipes of 0.25 / 0.5: the same consistency weights, SmoothAdv's epsilon = 2 sigma)
  [fmnist_cnn_lite_consistency_0.12]="--method consistency --sigma 0.12 --m-train 2 --lbd 10 --eta 0.5"
  [fmnist_cnn_lite_consistency_1.00]="--method consistency --sigma 1.0 --m-train 2 --lbd 10 --eta 0.5"
  [fmnist_cnn_lite_smoothadv_0.12]="--method smoothadv --sigma 0.12 --m-train 1 --epsilon 0.25 --num-steps 2 --warmup 2"
  [fmnist_cnn_lite_smoothadv_1.00]="--method smoothadv --sigma 1.0 --m-train 1 --epsilon 2.0 --num-steps 2 --warmup 2"
  [fmnist_cnn_lite_purified_0.25]="--method smoothadv --sigma 0.25 --m-train 1 --epsilon 0.5 --num-steps 2 --warmup 0 --init fmnist_cnn_smoothadv_0.25 --purify-sigma 0.25"
  [fmnist_cnn_lite_purified_0.50]="--method smoothadv --sigma 0.25 --m-train 1 --epsilon 0.5 --num-steps 2 --warmup 0 --init fmnist_cnn_smoothadv_0.25 --purify-sigma 0.5"
  [fmnist_cnn_lite_purified_1.00]="--method smoothadv --sigma 0.5 --m-train 1 --epsilon 1.0 --num-steps 2 --warmup 0 --init fmnist_cnn_smoothadv_0.50 --purify-sigma 1.0"
  [fmnist_cnn_lite_clean_purified_0.25]="--method gaussian --sigma 0 --init fmnist_cnn_clean --purify-sigma 0.25"
  [fmnist_cnn_lite_clean_purified_0.50]="--method gaussian --sigma 0 --init fmnist_cnn_clean --purify-sigma 0.5"
  [fmnist_cnn_lite_clean_purified_1.00]="--method gaussian --sigma 0 --init fmnist_cnn_clean --purify-sigma 1.0"
  [fmnist_cnn_lite_smoothmix_0.25]="--method smoothmix --sigma 0.25 --m-train 2 --num-steps 2 --eta 5 --warmup 1"
  [fmnist_cnn_lite_smoothmix_0.50]="--method smoothmix --sigma 0.5 --m-train 2 --num-steps 2 --eta 5 --warmup 1"
)
declare -A DENOISER_SIGMA=([fmnist_dncnn_0.25]=0.25 [fmnist_dncnn_0.50]=0.5)

# Whether model NAME finished all its steps/epochs (its saved JSON says so).
finished() {
  local file key
  if [[ -n ${DDPM_WIDTH[$1]:-} ]]; then file=$CK/$1/model/config.json key=extra; else file=$CK/$1/model.json key=training; fi
  [[ -n ${DENOISER_SIGMA[$1]:-} ]] && key=training
  [[ -f $file ]] && "$PY" -c 'import json, sys
sys.exit(0 if json.load(open(sys.argv[1]))[sys.argv[2]].get("finished") else 1)' "$file" "$key"
}

KEPT=$ROOT/training-state  # resumable states kept in the repository across sessions

resume_flag() { [[ -f $CK/$1/state/state.json ]] && echo --resume || true; }

# restore NAME: the state kept in the repository, where $CK has none (a new machine). A kept state
# is state.json beside state.safetensors, or beside its packed form state.safetensors.xz
# (diffsmooth.training.state.pack_file: lossless, about 0.8x).
restore() {
  if [[ ! -f $CK/$1/state/state.json && -f $KEPT/$1/state.json ]]; then
    mkdir -p "$CK/$1/state"
    if [[ -f $KEPT/$1/state.safetensors.xz ]]; then
      "$PY" -c 'import sys; from diffsmooth.training.state import unpack_file; unpack_file(sys.argv[1], sys.argv[2])' \
          "$KEPT/$1/state.safetensors.xz" "$CK/$1/state/state.safetensors"
    else
      cp "$KEPT/$1/state.safetensors" "$CK/$1/state/"
    fi
    cp "$KEPT/$1/state.json" "$CK/$1/state/"
    echo "$(date -u +%FT%TZ) $1: restored its state from $KEPT/$1 (step/epoch in state.json)"
  fi
}

# train_ddpm NAME: train (or continue) a DDPM of the recipe at its width.
train_ddpm() {
  mkdir -p "$CK/$1"
  # 40,000 steps of 64 images (about 43 epochs); AdamW 1e-3, cosine decay; EMA 0.9995. Longer than one
  # session on one core: resumable (the state in $CK/NAME/state; scripts/ddpm_state.sh keeps it in the repository).
  "$PY" -m diffsmooth train-diffusion --dataset fashion-mnist --variant improved --num-channels "${DDPM_WIDTH[$1]}" \
      --norm-groups 8 --channel-mult 1,2,2 --num-res-blocks 1 --attention-resolutions 7 --num-heads 1 \
      --dropout 0 --schedule cosine --diffusion-steps 1000 --focus-sigmas 0.12,1.0 --focus-fraction 0.9 \
      --steps "$DDPM_STEPS" --batch-size 64 --lr 1e-3 --warmup-steps 500 --ema 0.9995 --seed 0 \
      --checkpoint-every 250 --quiet --out "$CK/$1/model" --checkpoint-dir "$CK/$1/state" \
      $(resume_flag "$1") >> "$CK/$1.log" 2>&1
}

train_classifier() {
  mkdir -p "$CK/$1"
  local purify=()
  # the purifier: this queue's DDPM when it finished here (a from-scratch run), else the shipped one
  local ddpm=fmnist_ddpm
  finished "$DDPM" && ddpm=$CK/$DDPM/model
  [[ $1 == *purified_* ]] && purify=(--finetune-on-purified "$ddpm" --purify-draws 4 --purify-cache "$CK/purified_${1##*_}")
  # shellcheck disable=SC2086  # METHOD holds several options
  "$PY" -m diffsmooth train-classifier --dataset fashion-mnist --arch fmnist_cnn_lite ${METHOD[$1]} "${purify[@]}" \
      --epochs "${EPOCHS_OF[$1]:-$EPOCHS}" --batch-size 128 --lr "${LR_OF[$1]:-0.05}" --momentum 0.9 --weight-decay 5e-4 --seed 0 --quiet \
      --out "$CK/$1/model" --checkpoint-dir "$CK/$1/state" $(resume_flag "$1") >> "$CK/$1.log" 2>&1
}

train_denoiser() {
  mkdir -p "$CK/$1"
  # Salman et al.'s MSE objective on a DnCNN cut to Fashion-MNIST's size; Adam 1e-3, cosine decay.
  "$PY" -m diffsmooth train-denoiser --dataset fashion-mnist --arch dncnn --depth 10 --width 32 \
      --objective mse --sigma "${DENOISER_SIGMA[$1]}" --epochs "$DENOISER_EPOCHS" --batch-size 128 --lr 1e-3 \
      --seed 0 --quiet --out "$CK/$1/model" --checkpoint-dir "$CK/$1/state" $(resume_flag "$1") >> "$CK/$1.log" 2>&1
}

# run NAME: train NAME unless it is finished or another queue holds its lock ($CK/NAME.lock).
run() {
  if finished "$1"; then echo "$(date -u +%FT%TZ) $1 already finished"; return 0; fi
  mkdir -p "$CK"
  (
    flock -n 9 || { echo "$(date -u +%FT%TZ) $1 is being trained by another queue"; exit 0; }
    restore "$1"
    echo "$(date -u +%FT%TZ) $1 starts"
    if [[ -n ${DDPM_WIDTH[$1]:-} ]]; then train_ddpm "$1"
    elif [[ -n ${DENOISER_SIGMA[$1]:-} ]]; then train_denoiser "$1"
    else train_classifier "$1"; fi
    echo "$(date -u +%FT%TZ) $1 stops: $(tail -n 1 "$CK/$1.log")"
  ) 9> "$CK/$1.lock"
}

what=${1:-list}
case $what in
  queue)
    for name in "$DDPM" "${CLASSIFIERS[@]}" "${DENOISERS[@]}" "${LADDER[@]}"; do run "$name"; done ;;
  ship)
    weights=$ROOT/src/diffsmooth/weights
    for name in "$DDPM" "${CLASSIFIERS[@]}" "${DENOISERS[@]}" "${LADDER[@]}"; do
      finished "$name" || { echo "$name is not finished: not shipped"; continue; }
      if [[ -n ${DDPM_WIDTH[$name]:-} ]]; then
        shipped=${name%_lite}
        rm -rf "${weights:?}/$shipped" && cp -r "$CK/$name/model" "$weights/$shipped"
        echo "shipped $name as $shipped/"
      else
        shipped=${name/fmnist_cnn_lite_/fmnist_cnn_}
        cp "$CK/$name/model.safetensors" "$weights/$shipped.safetensors"
        # the JSON names its weights file: rename it with the file (the SHA-256 stays that of the bytes)
        "$PY" -c 'import json, sys
doc = json.load(open(sys.argv[1])); doc["weights"] = sys.argv[3]
open(sys.argv[2], "w").write(json.dumps(doc, indent=2, sort_keys=True) + "\n")' \
            "$CK/$name/model.json" "$weights/$shipped.json" "$shipped.safetensors"
        echo "shipped $name as $shipped"
      fi
    done ;;
  keep)
    name=${2:?usage: $0 keep MODEL}
    [[ -f $CK/$name/state/state.json ]] || { echo "no state of $name in $CK" >&2; exit 2; }
    mkdir -p "$KEPT/$name"
    src=$CK/$name/state
    # A checkpoint writes state.safetensors, then state.json: copy a pair that belongs together (no
    # write between the two copies, the JSON not older than the tensors), retrying while one is under way.
    for _ in $(seq 100); do
      before=$(stat -c %Y.%y "$src/state.json" "$src/state.safetensors" | tr '\n' ' ')
      cp "$src/state.safetensors" "$src/state.json" "$KEPT/$name/"
      after=$(stat -c %Y.%y "$src/state.json" "$src/state.safetensors" | tr '\n' ' ')
      [[ $before == "$after" && ! "$src/state.safetensors" -nt "$src/state.json" ]] && break
      sleep 1
    done
    [[ $before == "$after" ]] || { echo "the state of $name kept changing: try again" >&2; exit 1; }
    # pack it (lossless, ~0.8x: a DDPM of width 24 has a 10.8 MB state, over the 10 MB to commit)
    "$PY" -c 'import sys; from diffsmooth.training.state import pack_file, unpack_file
size = pack_file(sys.argv[1], sys.argv[2]); unpack_file(sys.argv[2], sys.argv[1] + ".check")
import filecmp; assert filecmp.cmp(sys.argv[1], sys.argv[1] + ".check", shallow=False)
print(f"packed to {size / 1e6:.2f} MB")' "$KEPT/$name/state.safetensors" "$KEPT/$name/state.safetensors.xz"
    rm -f "$KEPT/$name/state.safetensors" "$KEPT/$name/state.safetensors.check"
    echo "kept $name's state ($(grep -o '"step": [0-9]*' "$KEPT/$name/state.json")) in $KEPT/$name: commit it" ;;
  list)
    for name in "$DDPM" "${CLASSIFIERS[@]}" "${DENOISERS[@]}" "${LADDER[@]}"; do
      if finished "$name"; then echo "$name finished"; else echo "$name not finished"; fi
    done ;;
  *)
    [[ -n ${METHOD[$what]:-}${DENOISER_SIGMA[$what]:-}${DDPM_WIDTH[$what]:-} ]] || { echo "unknown model $what; see: $0 list" >&2; exit 2; }
    run "$what" ;;
esac
