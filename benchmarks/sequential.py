"""Samples per certificate: fixed-n CERTIFY against sequential certification, side by side.

On the same Fashion-MNIST test images, with the same per-image generators (so every mode
selects the class on the same n0 draw), this certifies with

  (a) ``fixed``: ``certify_batch`` at n = n_max (Cohen et al.);
  (b) ``seq r=0.5``: ``certify_sequential_batch(radii=[0.5])``, the single-radius decision;
  (c) ``seq table``: ``radii=[0.25, 0.5, 0.75, 1.0]``, the certified-accuracy table;
  (d) ``seq radius``: radius mode for each of ``--tolerances`` (stop when n_max samples would
      raise the radius by less than it, assuming the observed proportion stays);

and prints the mean and median samples per image (n0 + estimation samples), the ratio to
fixed-n, certified accuracy at r in {0, 0.25, 0.5, 0.75, 1.0, 1.5} (correct and radius >= r,
over all images; a fixed-radius mode answers only the radii it was asked, the others print
as "-") and the average certified radius (ACR: radius of correct certificates, 0 otherwise).
The table is written to RESULTS.md between ``<!-- sequential: ... -->`` markers; a later
run on the same device replaces it.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/sequential.py                # 200 images, n_max 10,000
    OMP_NUM_THREADS=1 python benchmarks/sequential.py --images 5 --n-max 500 --no-write   # smoke run

The model is the shipped Gaussian-augmented classifier at the smoothing sigma (RS), on CPU.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffsmooth.data import load_dataset
from diffsmooth.methods import MethodSpec, build_base
from diffsmooth.sampling import generator_for
from diffsmooth.sequential import SequentialOptions
from diffsmooth.smoothing import Certificate, SmoothedClassifier

HERE = Path(__file__).resolve().parent
RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)
TABLE_RADII = (0.25, 0.5, 0.75, 1.0)


class Memo:
    """The base ``h`` with a memory: ``h`` is deterministic, so the label of a noisy image
    identical (bit for bit) to one seen before is looked up instead of recomputed.

    Every mode draws its noise from the same per-image generators in chunks whose sizes are
    multiples of 16 values, and torch's CPU normal sampler then produces one stream however
    it is chunked; so the sequential modes see exactly the noisy images the fixed-n run
    labelled first, and cost (almost) no new model evaluations here.  ``misses`` counts the
    images that did reach the model."""

    def __init__(self, base: torch.nn.Module) -> None:
        self.base = base
        self.labels: dict[bytes, int] = {}
        self.misses = 0

    def __call__(self, noisy: torch.Tensor) -> torch.Tensor:
        rows = noisy.reshape(noisy.shape[0], -1).numpy()
        keys = [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows]
        new = [j for j, key in enumerate(keys) if key not in self.labels]
        if new:
            labels = self.base(noisy[new]).argmax(dim=1).tolist()
            self.labels.update((keys[j], label) for j, label in zip(new, labels))
            self.misses += len(new)
        return torch.tensor([self.labels[key] for key in keys], dtype=torch.long)

    def save(self, path: Path) -> None:
        # A (N, 16) byte matrix: numpy's "S16" strings would drop trailing zero bytes.
        keys = np.frombuffer(b"".join(self.labels), dtype=np.uint8).reshape(-1, 16)
        np.savez(path, keys=keys, labels=np.array(list(self.labels.values()), dtype=np.int16))

    def load(self, path: Path) -> None:
        with np.load(path) as data:
            keys = data["keys"].tobytes()
            self.labels.update((keys[16 * j : 16 * j + 16], int(label)) for j, label in enumerate(data["labels"]))


def certified_accuracy(certs: list[Certificate], labels: list[int], r: float) -> float:
    """Percent of images whose certificate is correct with radius >= r (not abstaining for r = 0)."""
    hits = [c.prediction == y and c.radius >= r for c, y in zip(certs, labels)]
    return 100.0 * sum(hits) / len(hits)


def average_certified_radius(certs: list[Certificate], labels: list[int]) -> float:
    return sum(c.radius if c.prediction == y else 0.0 for c, y in zip(certs, labels)) / len(certs)


def summarize(name: str, certs: list[Certificate], labels: list[int], seconds: float,
              asked: tuple[float, ...] | None, fixed_mean: float | None) -> dict[str, Any]:
    samples = [c.n0 + c.n for c in certs]
    mean = statistics.fmean(samples)
    return {
        "mode": name,
        "mean_samples": mean,
        "median_samples": statistics.median(samples),
        "fewer": (fixed_mean / mean) if fixed_mean else 1.0,
        "accuracy": {r: (certified_accuracy(certs, labels, r) if asked is None or r in asked else None) for r in RADII},
        "acr": average_certified_radius(certs, labels) if asked is None else None,
        "seconds": seconds,
        "stops": dict(sorted(_count(getattr(c, "stop", "fixed") for c in certs).items())),
    }


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def table(rows: list[dict[str, Any]]) -> list[str]:
    head = ["mode", "mean samples/img", "median", "fewer than fixed", *(f"r={r:g}" for r in RADII),
            "ACR", "new model evaluations", "s", "stops"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 2) + "---|"]
    for row in rows:
        acc = ["-" if row["accuracy"][r] is None else f"{row['accuracy'][r]:.1f}" for r in RADII]
        acr = "-" if row["acr"] is None else f"{row['acr']:.3f}"
        stops = ", ".join(f"{k} {v}" for k, v in row["stops"].items())
        lines.append(f"| {row['mode']} | {row['mean_samples']:.0f} | {row['median_samples']:.0f} | "
                     f"{row['fewer']:.1f}x | " + " | ".join(acc)
                     + f" | {acr} | {row['model_calls']} | {row['seconds']:.0f} | {stops} |")
    return lines


def write_results(path: Path, key: str, section: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"<!-- sequential: {re.escape(key)} -->.*?<!-- end sequential: {re.escape(key)} -->\n?",
                         re.DOTALL)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200, help="N Fashion-MNIST test images, from --start")
    parser.add_argument("--start", type=int, default=0,
                        help="first test image (e.g. 200: images no setting of the sequential rules was chosen on)")
    parser.add_argument("--n-max", type=int, default=10_000, help="fixed n, and the sequential budget")
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--tolerances", default="0.05,0.07,0.1", help="radius-mode tolerances, one row each")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--precision", default="float32", choices=("float32", "bfloat16"),
                        help="the model's precision (bfloat16 autocast is 1.8x faster on a CPU with avx512_bf16)")
    parser.add_argument("--group", type=int, default=50, help="images certified together (packed batches)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--labels", type=Path, default=None,
                        help="keep the model's labels of all noisy images in this .npz (read if it exists, written "
                             "after every group): a rerun with other sequential settings then needs no model calls")
    parser.add_argument("--json", type=Path, default=None, help="also write per-image results here (after every group)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)

    base = build_base(MethodSpec("rs", "fashion-mnist", args.sigma, channels_last=True, precision=args.precision))
    dataset = load_dataset("fashion-mnist", "test")
    indices = list(range(args.start, args.start + args.images))
    xs = torch.stack([dataset[i][0] for i in indices])
    labels = [int(dataset[i][1]) for i in indices]
    memo = Memo(base)
    if args.labels is not None and args.labels.exists():
        memo.load(args.labels)
    smoothed = SmoothedClassifier(memo, num_classes=10, sigma=args.sigma)
    common = (args.n0, args.n_max, args.alpha, args.batch)

    def sequential(options: SequentialOptions) -> Callable:
        return lambda x, g: smoothed.certify_sequential_batch(x, *common, g, options)

    modes: list[tuple[str, Callable, tuple[float, ...] | None]] = [
        (f"fixed n={args.n_max}", lambda x, g: smoothed.certify_batch(x, *common, g), None),
        ("seq r=0.5", sequential(SequentialOptions(radii=[0.5])), (0.5,)),
        ("seq table r=0.25..1", sequential(SequentialOptions(radii=TABLE_RADII)), TABLE_RADII),
    ]
    for tol in (float(t) for t in args.tolerances.split(",")):
        modes.append((f"seq radius tol={tol:g}", sequential(SequentialOptions(tolerance=tol)), None))
    # Group by group: the fixed run labels a group's noisy images, the sequential modes then
    # look them up, and the memo is emptied (it holds one group's labels at a time).
    certs: dict[str, list[Certificate]] = {name: [] for name, _, _ in modes}
    seconds = dict.fromkeys(certs, 0.0)
    model_calls = dict.fromkeys(certs, 0)
    start = time.perf_counter()
    for lo in range(0, len(indices), args.group):
        idx = indices[lo : lo + args.group]
        for name, certify, _ in modes:
            misses, tic = memo.misses, time.perf_counter()
            certs[name] += certify(xs[lo : lo + args.group], [generator_for(args.seed, i, "cpu") for i in idx])
            seconds[name] += time.perf_counter() - tic
            model_calls[name] += memo.misses - misses
        if args.labels is None:
            memo.labels.clear()
        else:
            memo.save(args.labels)
        done = len(certs[modes[0][0]])
        print(f"{done}/{len(indices)} images, {time.perf_counter() - start:.0f} s", flush=True)
        rows = []
        for name, _, asked in modes:
            fixed_mean = rows[0]["mean_samples"] if rows else None
            row = summarize(name, certs[name], labels[:done], seconds[name], asked, fixed_mean)
            row["model_calls"] = model_calls[name]
            rows.append(row)
        print("\n".join(table(rows)), flush=True)
        if args.json:
            raw = {name: [{"idx": i, "label": y, "prediction": c.prediction, "radius": c.radius, "n": c.n,
                           "stop": getattr(c, "stop", None)} for i, c, y in zip(indices, certs[name], labels)]
                   for name in certs}
            args.json.write_text(json.dumps({"rows": rows, "certificates": raw}, indent=1, default=str))

    command = "python benchmarks/sequential.py " + " ".join(sys.argv[1:] if argv is None else argv)
    threads = torch.get_num_threads()
    key = f"CPU {platform.processor() or platform.machine()}, {threads} thread{'s' if threads > 1 else ''}"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"<!-- sequential: {key} -->",
        f"## Sequential certification ({key})",
        "",
        f"{stamp}, PyTorch {torch.__version__}, `{command.strip()}` (torch threads {threads}).  "
        f"RS with the shipped `fmnist_cnn_gaussian_{args.sigma:.2f}`, sigma {args.sigma}, the first "
        f"{args.images} Fashion-MNIST test images from index {args.start}, n0 = {args.n0}, alpha = {args.alpha}, batch {args.batch}, "
        f"{args.precision} (channels-last); "
        f"every mode draws from the same per-image generators.  Samples per image count n0 + the estimation "
        f"samples; certified accuracy in percent over all images; '-' = radius not asked in that mode.  "
        "The fixed-n run labels every noisy image with the model; the sequential modes draw the same "
        "noise streams, and their labels are looked up from that run (`Memo`: the base is deterministic, "
        "so this changes no number, only the time; 's' is wall time on the shared CPU).",
        "",
        *table(rows),
        f"<!-- end sequential: {key} -->",
        "",
    ]
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        write_results(args.results, key, section)
        print(f"results written to {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
