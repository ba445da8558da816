#!/usr/bin/env bash
# Trains the models shipped in src/diffsmooth/weights/ exactly as they were made: CPU only, one
# thread per process (the two parts ran side by side on a shared 2-core machine), fixed seeds.
# Usage: scripts/train_shipped.sh [classifiers|diffusion|all]   (default all)
# Resumable: rerun a command with --resume appended to continue from its --checkpoint-dir.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
W=src/diffsmooth/weights
CK=${CK:-/tmp/diffsmooth_train}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
what=${1:-all}

if [[ $what == diffusion || $what == all ]]; then
  $PY -m diffsmooth train-diffusion --dataset fashion-mnist --variant improved --num-channels 32 \
      --channel-mult 1,2,2 --num-res-blocks 1 --attention-resolutions 7 --num-heads 1 --dropout 0 \
      --schedule cosine --diffusion-steps 1000 --steps 600 --batch-size 64 --lr 5e-4 --warmup-steps 50 \
      --ema 0.995 --seed 0 --checkpoint-every 100 --out $W/fmnist_ddpm --checkpoint-dir $CK/ddpm
fi

if [[ $what == classifiers || $what == all ]]; then
  # The CPU budget allows a few epochs in all; the noise-trained models start from the clean one.
  $PY -m diffsmooth train-classifier --dataset fashion-mnist --arch fmnist_cnn --method gaussian --sigma 0 \
      --epochs 3 --batch-size 128 --lr 0.05 --seed 0 --out $W/fmnist_cnn_clean --checkpoint-dir $CK/clean
  $PY -m diffsmooth train-classifier --dataset fashion-mnist --method gaussian --sigma 0.25 \
      --init $W/fmnist_cnn_clean --epochs 1 --batch-size 128 --lr 0.02 --seed 1 \
      --out $W/fmnist_cnn_gaussian_0.25 --checkpoint-dir $CK/g025
  $PY -m diffsmooth train-classifier --dataset fashion-mnist --method gaussian --sigma 0.5 \
      --init $W/fmnist_cnn_gaussian_0.25 --epochs 1 --batch-size 128 --lr 0.02 --seed 2 \
      --out $W/fmnist_cnn_gaussian_0.50 --checkpoint-dir $CK/g050
  $PY -m diffsmooth train-classifier --dataset fashion-mnist --method consistency --sigma 0.25 \
      --m-train 2 --lbd 10 --eta 0.5 --init $W/fmnist_cnn_gaussian_0.25 --epochs 1 --batch-size 128 --lr 0.02 \
      --seed 3 --out $W/fmnist_cnn_consistency_0.25 --checkpoint-dir $CK/cons025
fi
