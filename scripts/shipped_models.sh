# Sourced by scripts/model_card_certify.sh and scripts/pilot_pairings.sh (run from the repository root).
# model NAME: the shipped model NAME (fmnist_cnn_...), else $CLS's trained-but-not-shipped one
# (CLS/fmnist_cnn_lite_.../model, as scripts/train_shipped.sh writes it); nothing when neither exists.
model() {
  if [[ -f src/diffsmooth/weights/$1.safetensors ]]; then echo "$1"
  elif [[ -n ${CLS:-} && -f $CLS/${1/fmnist_cnn_/fmnist_cnn_lite_}/model.safetensors ]]; then
    echo "$CLS/${1/fmnist_cnn_/fmnist_cnn_lite_}/model"
  fi
}

# table_radii SIGMA: the radii of the tables, 0, sigma/2, ..., 5 sigma/2
table_radii() { awk -v s="$1" 'BEGIN { for (k = 0; k <= 5; k++) printf "%g ", k * s / 2 }'; }
