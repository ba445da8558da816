"""What the certifier's NaN/inf check costs: ``sample_counts`` with the check (as shipped) against
the same counting with the check removed, alternating, best of ``--repeats`` each.

    OMP_NUM_THREADS=1 python benchmarks/nan_check.py [--samples 20000 --batch 1000 --repeats 5]

The check is one on-device ``isfinite().all()`` per batch, OR-ed into a flag that is read once
per phase (one host synchronisation per ``sample_counts`` call, none per batch).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from diffsmooth.methods import MethodSpec, build_smoothed
from diffsmooth.sampling import Sampler


class Unchecked(Sampler):
    """The sampler as it was before the check: argmax of whatever the base returns."""

    def _labels(self, out, batch):  # noqa: ARG002
        return out.argmax(dim=-1)

    def _raise_if_nonfinite(self) -> None:
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--method", default="rs", help="a shipped Fashion-MNIST method (rs is the cheapest base, "
                        "so the check's share of the time is largest there)")
    args = parser.parse_args()
    checked = build_smoothed(MethodSpec(args.method, "fashion-mnist", 0.5))
    unchecked = Unchecked(checked.base, checked.num_classes, checked.sigma)
    samplers = {"with check": checked.sample_counts, "without": unchecked.counts}
    x = torch.rand(1, 1, 28, 28)
    times = {"with check": [], "without": []}
    for _ in range(args.repeats):
        for name, sample_counts in samplers.items():
            generator = torch.Generator().manual_seed(0)
            start = time.perf_counter()
            counts = sample_counts(x, args.samples, args.batch, [generator])
            times[name].append(time.perf_counter() - start)
        assert int(counts.sum()) == args.samples
    best = {name: min(t) for name, t in times.items()}
    threads = os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads()))
    print("| base | samples | batch | with check s | without s | ratio | OMP_NUM_THREADS |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.method} (shipped) | {args.samples} | {args.batch} | {best['with check']:.3f} | "
          f"{best['without']:.3f} | {best['with check'] / best['without']:.3f} | {threads} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
