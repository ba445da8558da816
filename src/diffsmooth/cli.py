"""The ``diffsmooth`` command line: parses arguments and calls the library."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    import torch

    from diffsmooth import SmoothedClassifier

    # A linear two-class base whose smoothed radius is known exactly: |w.x + b| / ||w||.
    w = torch.tensor([1.0, -0.5, 0.25, 2.0])
    base = lambda x: (x.reshape(x.shape[0], -1) @ w - 1.2 > 0).long()  # noqa: E731
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.5]]])
    cert = SmoothedClassifier(base, 2, sigma=0.5).certify(
        x, n0=100, n=args.n, alpha=0.001, batch_size=10_000, generator=torch.Generator().manual_seed(0)
    )
    print(f"prediction {cert.prediction}  certified radius {cert.radius:.4f}  (true radius {1.05 / float(w.norm()):.4f})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffsmooth", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the embedded default")
    demo.add_argument("--n", type=int, default=100_000)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
