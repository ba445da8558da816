"""Cohen's p_A-only radius against the separate p_B bound, from the same counts.

    OMP_NUM_THREADS=1 python benchmarks/separate_pb.py [--split train --every 300 --images 200 --n 100]

Shipped RS models at sigma 0.25 and 0.5; per image one n0 = 100 selection draw and one n estimation
draw (seed 0), then ACR (mean of radius x correct) with Cohen's bound and with ``stats.separate_pb_bounds``
at p_B shares 0.1 (``stats.PB_ALPHA_SHARE``) and 0.5. The default images are *training* images, the ones
the share was checked on; ``--split test`` gives numbers on test images.
"""

from __future__ import annotations

import argparse
import os

import torch

from diffsmooth.data import load_dataset
from diffsmooth.methods import MethodSpec, build_smoothed
from diffsmooth.sampling import generator_for
from diffsmooth.stats import certified_radius, certified_radius_separate, clopper_pearson_lower, separate_pb_bounds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="train", choices=("train", "test"))
    parser.add_argument("--every", type=int, default=300, help="take every k-th image")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.001)
    args = parser.parse_args()
    dataset = load_dataset("fashion-mnist", split=args.split)
    indices = list(range(0, len(dataset), args.every))[: args.images]
    xs = torch.stack([dataset[i][0] for i in indices])
    labels = [int(dataset[i][1]) for i in indices]
    print(f"{len(indices)} {args.split} images (every {args.every}th), n0 = 100, n = {args.n}, alpha = {args.alpha}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', torch.get_num_threads())}")
    print("| sigma | Cohen ACR | separate p_B, share 0.1 | separate p_B, share 0.5 |")
    print("|---:|---:|---:|---:|")
    for sigma in (0.25, 0.5):
        smoothed = build_smoothed(MethodSpec("rs", "fashion-mnist", sigma))
        gens = [generator_for(0, i, "cpu") for i in indices]
        selection = smoothed.sample_counts(xs, 100, 1000, gens)
        estimation = smoothed.sample_counts(xs, args.n, 1000, gens)
        acr = {"cohen": 0.0, 0.1: 0.0, 0.5: 0.0}
        for i, label in enumerate(labels):
            top = int(selection[i].argmax())
            if top != label:
                continue
            counts = estimation[i].tolist()
            p_lower = clopper_pearson_lower(counts[top], args.n, args.alpha)
            acr["cohen"] += certified_radius(p_lower, sigma)
            for share in (0.1, 0.5):
                acr[share] += certified_radius_separate(*separate_pb_bounds(counts, top, args.alpha, share), sigma)
        k = len(indices)
        print(f"| {sigma} | {acr['cohen'] / k:.4f} | {acr[0.1] / k:.4f} | {acr[0.5] / k:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
