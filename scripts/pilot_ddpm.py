"""Pilot a DDPM configuration: train on the first 58,000 Fashion-MNIST train images, then measure
one-shot purification PSNR/MSE on the held-out last 2,000 train images (never the test split).

Usage: OMP_NUM_THREADS=1 python scripts/pilot_ddpm.py --name A --steps 2000 [train-diffusion options as
key=value, e.g. num_channels=16 norm_groups=8 focus_sigmas=0.12,1.0 focus_fraction=0.9]
Prints one JSON line: config, training seconds, steps/s and the held-out quality per sigma.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields

import torch

from diffsmooth.data import load_dataset
from diffsmooth.diffusion import load_diffusion_model
from diffsmooth.diffusion.diagnostics import purification_quality
from diffsmooth.training import DiffusionTrainConfig, train_diffusion

HELD_OUT = 2000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True)
    parser.add_argument("--root", default="/work/ckpt/pilots")
    parser.add_argument("--eval-images", type=int, default=HELD_OUT)
    parser.add_argument("settings", nargs="*", help="DiffusionTrainConfig fields as key=value")
    args = parser.parse_args()
    types = {f.name: f.type for f in fields(DiffusionTrainConfig)}
    given = dict(s.split("=", 1) for s in args.settings)
    kwargs = {}
    for key, value in given.items():
        kind = types[key]
        kwargs[key] = (int(value) if "int" in kind and "." not in value else
                       float(value) if "float" in kind else value)
    train = load_dataset("fashion-mnist", split="train")
    images, _ = train.tensors()
    config = DiffusionTrainConfig(train_limit=len(images) - HELD_OUT, **kwargs)
    out = f"{args.root}/{args.name}"
    started = time.time()
    result = train_diffusion(config, out, checkpoint_dir=f"{out}.train", quiet=True,
                             checkpoint_every=config.steps)
    seconds = time.time() - started
    held_out = images[len(images) - HELD_OUT:][:args.eval_images]
    model = load_diffusion_model(result.path)
    quality = purification_quality(model, held_out, (0.25, 0.5, 1.0), torch.Generator().manual_seed(7))
    print(json.dumps({"name": args.name, "config": config.to_dict(), "train_seconds": round(seconds, 1),
                      "steps_per_s": round(config.steps / seconds, 3), "final_loss": result.info["final_loss"],
                      "quality": [q.to_dict() for q in quality]}), flush=True)


if __name__ == "__main__":
    main()
