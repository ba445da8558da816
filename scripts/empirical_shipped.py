"""Empirical robust accuracy of the shipped Fashion-MNIST methods (a small run, to size a big one).

For each method (rs, dds, diffsmooth at --sigma) and each of the first --images test images
(every --skip-th): PREDICT at the clean image, then for each eps the SmoothAdv attack on the
smoothed classifier (``diffsmooth.attacks.empirical_accuracy``) and PREDICT at the attacked
point.  Prints accuracy per eps and seconds per image per eps; image i draws from the
generator ``runner.generator_for(seed, i)`` as certify does.

Usage: OMP_NUM_THREADS=1 .venv/bin/python scripts/empirical_shipped.py --images 20 --steps 10 --eot 4
Until `diffsmooth attack` exists, this is the way to run the attack on the shipped models.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from diffsmooth.attacks import AttackConfig, EmpiricalSettings, empirical_accuracy
from diffsmooth.data import load_dataset
from diffsmooth.methods import MethodSpec, build_base
from diffsmooth.sampling import generator_for
from diffsmooth.smoothing import SmoothedClassifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["rs", "dds", "diffsmooth"])
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--skip", type=int, default=50)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--eot", type=int, default=4)
    parser.add_argument("--restarts", type=int, default=1)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--batch-size", type=int, default=400)
    parser.add_argument("--group", type=int, default=4, help="images attacked together")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the per-image records here")
    args = parser.parse_args()

    data = load_dataset("fashion-mnist", "test")
    indices = list(range(0, len(data), args.skip))[: args.images]
    config = AttackConfig(steps=args.steps, eot=args.eot, restarts=args.restarts, batch_size=args.batch_size)
    settings = EmpiricalSettings(config, n=args.n, alpha=args.alpha, batch_size=args.batch_size)
    print(f"{len(indices)} images, sigma {args.sigma}, {config}, PREDICT n={args.n} alpha={args.alpha}, "
          f"torch threads {torch.get_num_threads()}")
    header = ["method", "clean"] + [f"eps {e}" for e in args.eps] + ["s/image/eps (attack+predict)", "s/image clean"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    dump = {}
    for method in args.methods:
        base = build_base(MethodSpec(method, "fashion-mnist", args.sigma))
        smoothed = SmoothedClassifier(base, 10, args.sigma)
        clean_correct, records, clean_s = 0, [], 0.0
        for start in range(0, len(indices), args.group):
            chunk = indices[start : start + args.group]
            xs = torch.stack([data[i][0] for i in chunk])
            labels = [int(data[i][1]) for i in chunk]
            t0 = time.perf_counter()
            clean = smoothed.predict_batch(xs, args.n, args.alpha, args.batch_size,
                                           [generator_for(args.seed, i, "cpu") for i in chunk])
            clean_s += time.perf_counter() - t0
            clean_correct += sum(p.prediction == y for p, y in zip(clean, labels))
            # The attack's stream differs from the clean PREDICT's (seed + 1).
            records += empirical_accuracy(smoothed, xs, labels, args.eps, settings,
                                          generators=[generator_for(args.seed + 1, i, "cpu") for i in chunk],
                                          indices=chunk)
        k = len(indices)
        accs = [sum(r.correct for r in records if r.eps == e) / k for e in args.eps]
        seconds = sum(r.seconds for r in records) / len(records)
        row = [method, f"{clean_correct / k:.2f}"] + [f"{a:.2f}" for a in accs] + [f"{seconds:.2f}", f"{clean_s / k:.2f}"]
        print("| " + " | ".join(row) + " |", flush=True)
        dump[method] = [r.__dict__ for r in records]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "records": dump}, f, indent=1)


if __name__ == "__main__":
    main()
