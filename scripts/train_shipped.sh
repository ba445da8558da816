#!/usr/bin/env bash
# Trains the Fashion-MNIST models of issue #15 from scratch: the narrow DDPM (ADM UNet, 16 channels,
# 8 norm groups, 95.9 MFLOP per sample, timesteps focused on the t* range of sigma 0.12-1.0, EMA)
# and nine fmnist_cnn_lite classifiers (8.3 MFLOP per image) with the same budget for every method
# (same epochs, batch, SGD schedule, seed and initialisation): clean; gaussian 0.12, 0.25, 0.5, 1.0;
# consistency and smoothadv 0.25 and 0.5. CPU, one thread per process (OMP_NUM_THREADS=1), fixed seeds.
#
# Usage: scripts/train_shipped.sh MODEL   train (or continue) one model: a name listed by `list`
#        scripts/train_shipped.sh queue   everything in order, skipping finished models: the DDPM up
#                                         to step $DDPM_FIRST, the classifiers, then the DDPM's rest.
#                                         Re-run it after an interruption: every step resumes.
#        scripts/train_shipped.sh list    the model names and whether each is finished
# Outputs: $CK/NAME/model[.safetensors|.json] (the trained model), $CK/NAME/state (resumable state),
# $CK/NAME.log. Copy finished models into src/diffsmooth/weights/ by hand.
set -euo pipefail
ROOT=${ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$ROOT"
PY=${PY:-.venv/bin/python}
CK=${CK:-/work/ckpt}
DDPM_FIRST=${DDPM_FIRST:-20000}  # steps before the classifiers take over: ~100 CPU-minutes at 0.30 s/step
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}  # this checkout's code, whatever is installed

DDPM=fmnist_ddpm_lite
CLASSIFIERS=(fmnist_cnn_lite_clean fmnist_cnn_lite_gaussian_0.12 fmnist_cnn_lite_gaussian_0.25
             fmnist_cnn_lite_gaussian_0.50 fmnist_cnn_lite_gaussian_1.00 fmnist_cnn_lite_consistency_0.25
             fmnist_cnn_lite_consistency_0.50 fmnist_cnn_lite_smoothadv_0.25 fmnist_cnn_lite_smoothadv_0.50)
EPOCHS=${EPOCHS:-20}

# Extra options per classifier: method, sigma and the method's hyper-parameters.
declare -A METHOD=(
  [fmnist_cnn_lite_clean]="--method gaussian --sigma 0"
  [fmnist_cnn_lite_gaussian_0.12]="--method gaussian --sigma 0.12"
  [fmnist_cnn_lite_gaussian_0.25]="--method gaussian --sigma 0.25"
  [fmnist_cnn_lite_gaussian_0.50]="--method gaussian --sigma 0.5"
  [fmnist_cnn_lite_gaussian_1.00]="--method gaussian --sigma 1.0"
  [fmnist_cnn_lite_consistency_0.25]="--method consistency --sigma 0.25 --m-train 2 --lbd 10 --eta 0.5"
  [fmnist_cnn_lite_consistency_0.50]="--method consistency --sigma 0.5 --m-train 2 --lbd 10 --eta 0.5"
  [fmnist_cnn_lite_smoothadv_0.25]="--method smoothadv --sigma 0.25 --m-train 1 --epsilon 0.5 --num-steps 2 --warmup 5"
  [fmnist_cnn_lite_smoothadv_0.50]="--method smoothadv --sigma 0.5 --m-train 1 --epsilon 1.0 --num-steps 2 --warmup 5"
)

# Whether model NAME finished all its steps/epochs (its saved JSON says so).
finished() {
  local file key
  if [[ $1 == "$DDPM" ]]; then file=$CK/$1/model/config.json key=extra; else file=$CK/$1/model.json key=training; fi
  [[ -f $file ]] && "$PY" -c 'import json, sys
sys.exit(0 if json.load(open(sys.argv[1]))[sys.argv[2]].get("finished") else 1)' "$file" "$key"
}

# Training steps the DDPM's resumable state has done (0 if none).
ddpm_step() {
  local meta=$CK/$DDPM/state/state.json
  if [[ -f $meta ]]; then "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["step"])' "$meta"; else echo 0; fi
}

resume_flag() { [[ -f $CK/$1/state/state.json ]] && echo --resume || true; }

# train_ddpm [STOP_AT]: train (or continue) the DDPM, up to step STOP_AT if given.
train_ddpm() {
  local stop=()
  if [[ -n ${1:-} ]]; then
    local left=$(( $1 - $(ddpm_step) ))
    (( left > 0 )) || return 0
    stop=(--stop-after "$left")
  fi
  mkdir -p "$CK/$DDPM"
  # 40,000 steps of 64 images (about 43 epochs); AdamW 1e-3, cosine decay; EMA 0.9995.
  "$PY" -m diffsmooth train-diffusion --dataset fashion-mnist --variant improved --num-channels 16 \
      --norm-groups 8 --channel-mult 1,2,2 --num-res-blocks 1 --attention-resolutions 7 --num-heads 1 \
      --dropout 0 --schedule cosine --diffusion-steps 1000 --focus-sigmas 0.12,1.0 --focus-fraction 0.9 \
      --steps 40000 --batch-size 64 --lr 1e-3 --warmup-steps 500 --ema 0.9995 --seed 0 \
      --checkpoint-every 500 "${stop[@]}" --quiet --out "$CK/$DDPM/model" --checkpoint-dir "$CK/$DDPM/state" \
      $(resume_flag "$DDPM") >> "$CK/$DDPM.log" 2>&1
}

train_classifier() {
  mkdir -p "$CK/$1"
  # shellcheck disable=SC2086  # METHOD holds several options
  "$PY" -m diffsmooth train-classifier --dataset fashion-mnist --arch fmnist_cnn_lite ${METHOD[$1]} \
      --epochs "$EPOCHS" --batch-size 128 --lr 0.05 --momentum 0.9 --weight-decay 5e-4 --seed 0 --quiet \
      --out "$CK/$1/model" --checkpoint-dir "$CK/$1/state" $(resume_flag "$1") >> "$CK/$1.log" 2>&1
}

run() {
  if finished "$1"; then echo "$(date -u +%FT%TZ) $1 already finished"; return 0; fi
  echo "$(date -u +%FT%TZ) $1 ${2:+up to step $2 }starts"
  if [[ $1 == "$DDPM" ]]; then train_ddpm "${2:-}"; else train_classifier "$1"; fi
  echo "$(date -u +%FT%TZ) $1 stops: $(tail -n 1 "$CK/$1.log")"
}

what=${1:-list}
case $what in
  queue)
    run "$DDPM" "$DDPM_FIRST"
    for name in "${CLASSIFIERS[@]}"; do run "$name"; done
    run "$DDPM" ;;
  list)
    for name in "$DDPM" "${CLASSIFIERS[@]}"; do
      if finished "$name"; then echo "$name finished"; else echo "$name not finished"; fi
    done ;;
  "$DDPM") run "$DDPM" ;;
  *)
    [[ -n ${METHOD[$what]:-} ]] || { echo "unknown model $what; see: $0 list" >&2; exit 2; }
    run "$what" ;;
esac
