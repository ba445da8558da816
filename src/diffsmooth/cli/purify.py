"""``diffsmooth purify``: a picture of what the purifier does to noisy images."""

from __future__ import annotations

import argparse
import sys

from diffsmooth import validate
from diffsmooth.validate import InputError


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
    p.add_argument("--out", default=None, help="figure to write (.png, .pdf or .svg)")
    p.add_argument("--stats", action="store_true",
                   help="measure instead (or as well): over --draws noise draws per image, the distribution of "
                   "||D(x+d) - x|| (the paper's bounded neighbourhood), of the distance to the mean of --runs "
                   "stochastic reverse runs in --steps steps (one-shot approximates the mean), and the local sigma "
                   "the spread suggests (per-pixel rms of D(x+d) - x)")
    p.add_argument("--draws", type=int, default=16, help="--stats: noise draws per image")
    p.add_argument("--json", default=None, help="--stats: also write the numbers to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=_purify)


def _purify(args: argparse.Namespace) -> int:
    from diffsmooth.cli.certify import method_spec, pick_device
    from diffsmooth.data import load_dataset
    from diffsmooth.purification import purification_grid
    from diffsmooth.runner import select_indices
    from diffsmooth.cli.options import typed_options
    from diffsmooth.visualize import check_figure_path

    typed_options(args)  # plain values (--runs / --steps are the diagnostic's reverse runs here)
    spec = method_spec(args)
    spec.validate()
    validate.seed(args.seed, "--seed")
    if args.out is None and not args.stats:
        raise InputError("give --out FIGURE for the grid, --stats for the diagnostic, or both")
    if args.out is not None:
        args.out = check_figure_path(args.out, "--out")
        validate.not_replaced([args.out], args.overwrite, "figure", "--out")
    if args.json is not None:
        args.json = validate.output_file(args.json, "--json")
        if args.out is not None and args.json.resolve() == args.out.resolve():
            raise InputError(f"--json and --out name the same file {args.out}; give each its own")
        validate.not_replaced([args.json], args.overwrite, "file", "--json")
    device = pick_device(args.device)
    dataset = load_dataset(args.dataset, split=args.split, data_dir=args.data_dir)
    indices = select_indices(len(dataset), indices=args.indices)
    if args.stats:
        from diffsmooth.purification import purification_stats

        stats = purification_stats(spec, dataset.__getitem__, indices, args.seed, device, draws=args.draws,
                                   reverse_runs=args.runs, reverse_steps=args.steps)
        print(_stats_text(stats))
        if args.json is not None:
            from diffsmooth.files import write_json

            write_json(args.json, stats.to_dict())
    if args.out is not None:
        report = purification_grid(spec, dataset.__getitem__, indices, args.seed, args.out, device)
        print(f"t* = {report.t_star}, effective sigma = {report.effective_sigma:.4f}; PSNR noisy "
              f"{report.psnr_noisy:.2f} dB, purified {report.psnr_purified:.2f} dB; grid written to {args.out}",
              file=sys.stderr)
    return 0


def _stats_text(stats) -> str:
    def row(name, summary):
        if summary is None:
            return f"| {name} | - | - | - | - | - |"
        q = summary.quantiles
        return (f"| {name} | {summary.mean:.3f} | {q['q05']:.3f} | {q['q50']:.3f} | {q['q95']:.3f} | "
                f"{q['q99']:.3f} |")

    t_star = stats.describe.get("t_star", "?")
    return "\n".join([
        f"sigma {stats.sigma:g} (t* = {t_star}), {stats.images} images x {stats.draws} draws, "
        f"{stats.reverse_runs} reverse runs; l2 distances in [0,1] pixel units:",
        "| distance | mean | q05 | median | q95 | q99 |", "|---|---:|---:|---:|---:|---:|",
        row("||d|| (the smoothing noise)", stats.noise_norm),
        row("||D(x+d) - x|| (to the clean image)", stats.to_clean),
        row("||D(x+d) - mean of reverse runs||", stats.to_reverse_mean),
        f"suggested local sigma (per-pixel rms of D(x+d) - x): {stats.local_sigma:.3f}; "
        f"PSNR {stats.psnr:.2f} dB, MSE {stats.mse:.5f}",
    ])
