"""Pilot classifier architectures under noise: train each on the first 58,000 Fashion-MNIST train
images with Gaussian augmentation, then measure accuracy on the held-out last 2,000 train images
(never the test split), clean and under N(0, sigma^2) noise (5 draws per image).

Usage: OMP_NUM_THREADS=1 python scripts/pilot_classifier.py --arch fmnist_cnn fmnist_cnn_lite --sigma 0.5 --epochs 2
Prints one JSON line per architecture (MFLOP per image, training seconds, accuracies).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from diffsmooth.classifiers import create_classifier
from diffsmooth.cost import forward_flops
from diffsmooth.data import load_dataset
from diffsmooth.training import ClassifierTrainConfig, accuracy, train_classifier

HELD_OUT = 2000
DRAWS = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", required=True)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--root", default="/work/ckpt/pilots")
    args = parser.parse_args()
    images, labels = load_dataset("fashion-mnist", split="train").tensors()
    x, y = images[-HELD_OUT:], labels[-HELD_OUT:]
    for arch in args.arch:
        config = ClassifierTrainConfig(arch=arch, method="gaussian", sigma=args.sigma, epochs=args.epochs, lr=args.lr,
                                       seed=0, train_limit=len(images) - HELD_OUT)
        started = time.time()
        out = f"{args.root}/clf_{arch}_{args.sigma:g}"
        result = train_classifier(config, out, checkpoint_dir=out + ".train", quiet=True, eval_limit=1)
        seconds = time.time() - started
        gen = torch.Generator().manual_seed(11)
        noisy = [accuracy(result.model, x, y, args.sigma, gen) for _ in range(DRAWS)]
        print(json.dumps({"arch": arch, "mflop": round(forward_flops(create_classifier(arch), (1, 28, 28)) / 1e6, 2), "sigma": args.sigma, "epochs": args.epochs,
                          "train_seconds": round(seconds, 1), "held_out_clean": accuracy(result.model, x, y),
                          "held_out_noisy": sum(noisy) / DRAWS, "noisy_draws": noisy}), flush=True)


if __name__ == "__main__":
    main()
