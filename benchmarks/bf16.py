"""bfloat16 against float32 on the CPU with the shipped models: do the labels agree, and is it faster?

For each method (RS, DDS, DiffSmooth soft) at --sigma, the base classifier is built twice from the
shipped Fashion-MNIST models, ``--precision float32`` and ``--precision bfloat16`` (CPU autocast),
and both label the same noisy test images (one N(0, sigma^2) draw per image, seed 0): the share of
equal labels, and the share of images where each is correct.  Speed: noise samples per second of
``SmoothedClassifier.sample_counts`` at --batch, best of --repeats, the two precisions side by side
in one run.  bf16 is fast only where the CPU has native bf16 matrix instructions (x86: avx512_bf16
or amx_bf16; the table's header says whether this one does).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bf16.py --images 1000
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from diffsmooth.data import load_dataset
from diffsmooth.methods import MethodSpec, build_base
from diffsmooth.smoothing import SmoothedClassifier

METHODS = ("rs", "dds", "diffsmooth")


def cpu_bf16() -> str:
    """The CPU's native bf16 instructions, from /proc/cpuinfo ("none" when it lists none)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    found = [f for f in ("avx512_bf16", "amx_bf16") if f in flags.split()]
    return ", ".join(found) or "none"


@torch.inference_mode()
def labels(base: torch.nn.Module, noisy: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([base(noisy[i:i + batch]).argmax(-1) for i in range(0, len(noisy), batch)])


def rate(base: torch.nn.Module, x: torch.Tensor, sigma: float, samples: int, batch: int, repeats: int) -> float:
    """Noise samples per second of ``sample_counts`` on one image (best of ``repeats``)."""
    smoothed = SmoothedClassifier(base, 10, sigma)
    smoothed.sample_counts(x[None], batch, batch, [torch.Generator().manual_seed(0)])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        smoothed.sample_counts(x[None], samples, batch, [torch.Generator().manual_seed(0)])
        best = min(best, time.perf_counter() - start)
    return samples / best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="noisy test images for the label agreement")
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--samples", type=int, default=2000, help="noise samples per timing")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = load_dataset("fashion-mnist", split="test")
    clean = torch.stack([data[i][0] for i in range(args.images)])
    truth = torch.tensor([data[i][1] for i in range(args.images)])
    noisy = clean + args.sigma * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    threads = os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads()))
    print(f"Fashion-MNIST, shipped models, sigma {args.sigma}, first {args.images} test images (one noise draw each); "
          f"speed: sample_counts at batch {args.batch}, {args.samples} samples, best of {args.repeats}; "
          f"CPU bf16 instructions: {cpu_bf16()}; {threads} thread(s)\n")
    print("| method | labels equal | correct float32 | correct bfloat16 | float32 samples/s | bfloat16 samples/s | "
          "speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for method in METHODS:
        bases = {p: build_base(MethodSpec(method, "fashion-mnist", args.sigma, precision=p))
                 for p in ("float32", "bfloat16")}
        got = {p: labels(b, noisy, args.batch) for p, b in bases.items()}
        speed = {p: rate(b, clean[0], args.sigma, args.samples, args.batch, args.repeats) for p, b in bases.items()}
        equal = float((got["float32"] == got["bfloat16"]).float().mean())
        correct = {p: float((g == truth).float().mean()) for p, g in got.items()}
        print(f"| {method} | {100 * equal:.1f}% | {100 * correct['float32']:.1f}% | {100 * correct['bfloat16']:.1f}% | "
              f"{speed['float32']:.0f} | {speed['bfloat16']:.0f} | {speed['bfloat16'] / speed['float32']:.2f}x |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
