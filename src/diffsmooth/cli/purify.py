"""``diffsmooth purify``: a picture of what the purifier does to noisy images."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffsmooth.errors import InputError


def register(sub, formatter) -> None:
    from diffsmooth.cli.certify import add_method_arguments

    p = sub.add_parser(
        "purify",
        formatter_class=formatter,
        help="image grid: clean, noisy, purified, purified + local noise",
        description="Add Gaussian noise of std --sigma to dataset images, purify them with the one-shot denoiser "
        "(t* chosen from sigma) and write a grid with one row per image: clean | noisy | purified | purified + "
        "one local noise sample (std --local-sigma). Prints t*, the effective sigma and the PSNRs.",
    )
    add_method_arguments(p)
    p.add_argument("--indices", type=int, nargs="+", default=list(range(8)), help="dataset indices to show")
    p.add_argument("--split", choices=("test", "train"), default="test", help="dataset split")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise")
    p.add_argument("--out", type=Path, required=True, help="figure to write (.png, .pdf or .svg)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=_purify)


def _purify(args: argparse.Namespace) -> int:
    from diffsmooth.cli.certify import method_spec, pick_device
    from diffsmooth.data import load_dataset
    from diffsmooth.purification import purification_grid
    from diffsmooth.runner import select_indices
    from diffsmooth.visualize import check_figure_path

    spec = method_spec(args)
    spec.validate()
    check_figure_path(args.out, "--out")
    if args.out.exists() and not args.overwrite:
        raise InputError(f"{args.out} exists; pass --overwrite to replace it or choose another --out")
    device = pick_device(args.device)
    dataset = load_dataset(args.dataset, split=args.split, data_dir=args.data_dir)
    indices = select_indices(len(dataset), indices=args.indices)
    report = purification_grid(spec, dataset.__getitem__, indices, args.seed, args.out, device)
    print(f"t* = {report.t_star}, effective sigma = {report.effective_sigma:.4f}; PSNR noisy "
          f"{report.psnr_noisy:.2f} dB, purified {report.psnr_purified:.2f} dB; grid written to {args.out}",
          file=sys.stderr)
    return 0
