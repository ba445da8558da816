"""``diffsmooth demo``: the embedded default, end to end on Fashion-MNIST with the shipped models."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25)
# The defaults suit the shipped models (their cost per noise sample sets how many images fit in 3 minutes):
# sequential sampling decides each radius of the table with at most DEFAULT_N_MAX estimation samples
# (enough for 2.5 sigma at sigma 0.5), fixed sampling draws DEFAULT_N.
DEFAULT_SIGMA, DEFAULT_N, DEFAULT_N_MAX, DEFAULT_MAX = 0.5, 500, 1500, 60
RANK_RADII = (0.5, 0.75, 1.0)  # where the paired comparison decides whether the demo's sample ranks the methods
MIN_RANK_IMAGES = 30  # below this the normal approximation behind "two standard errors" is not trusted
ROBUST = ("smoothadv", "consistency", "none")
OURS = "DiffSmooth (soft)"


def register(sub, formatter) -> None:
    from diffsmooth.cli.options import add_cpu_workers

    p = sub.add_parser(
        "demo",
        formatter_class=formatter,
        help="certify Fashion-MNIST test images with RS, DDS and DiffSmooth (shipped models, CPU-friendly)",
        description="Certify the first --max Fashion-MNIST test images with Gaussian randomized smoothing, "
        "diffusion denoised smoothing and DiffSmooth using the models shipped with diffsmooth, print the "
        "comparison table, and write the results, a certified-accuracy plot and a purification grid into "
        "--out-dir. Sequential sampling (the default) draws each image's samples in looks until every radius "
        "of the table is decided, at most --n-max; --sampling fixed draws --n for every image. The defaults "
        "finish in under 3 minutes on 2 CPU cores; raise --n-max and --max for tighter, larger results "
        "(MODEL_CARD.md has 500 images).",
    )
    p.add_argument("--sigma", type=float, default=DEFAULT_SIGMA,
                   help="smoothing noise std in [0,1] pixel units (0.25, 0.5 or 1.0)")
    p.add_argument("--max", type=int, default=DEFAULT_MAX, help="number of test images")
    p.add_argument("--n0", type=int, default=32, help="selection samples per image")
    p.add_argument("--sampling", choices=("sequential", "fixed"), default="sequential",
                   help="sequential: looks until each radius of the table is decided; fixed: --n samples per image")
    p.add_argument("--n-max", type=int, default=DEFAULT_N_MAX, help="sequential: most estimation samples per image")
    p.add_argument("--n", type=int, default=DEFAULT_N, help="fixed: estimation samples per image")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability of each certificate")
    p.add_argument("--batch", type=int, default=512, help="noisy images per forward pass")
    p.add_argument("--m", type=int, default=5, help="DiffSmooth local noise samples")
    p.add_argument("--local-sigma", type=float, default=0.25, help="DiffSmooth local noise std")
    p.add_argument("--robust", choices=ROBUST, default="smoothadv",
                   help="the robust training beside Gaussian RS (an RS row with its classifier for --sigma) and "
                   "DiffSmooth's local classifier (its classifier for --local-sigma), the paper's pairing; "
                   "none: Gaussian-trained local classifier, no robust RS row")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files (default: usual places)")
    p.add_argument("--out-dir", default="demo-output", help="where results, plot and grid go")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0, help="run seed")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_cpu_workers(p)
    p.set_defaults(func=_demo)


WRITER = "diffsmooth demo"
"""The manifests' mark of the demo's results files (``_owned_by_demo``)."""


def _owned_by_demo(folder: Path, specs) -> bool:
    """Whether the demo may replace the results in ``folder``: True where every results file it would
    write that exists, and every run its index lists, is the demo's (its manifest's ``written_by``;
    manifests of demos before the mark carry no ``argv``, which certify records); False for a new
    folder. Raises ``InputError`` naming a file of another run (a certify --out-dir into the same folder)."""
    from diffsmooth.results import INDEX_NAME, grid_files, manifest_path, read_index, read_manifest
    from diffsmooth.validate import InputError

    if not folder.exists():
        return False
    paths = list(grid_files(folder, [m.to_dict() for m in specs]).values())
    if (folder / INDEX_NAME).is_file():
        paths += [entry["path"] for entry in read_index(folder)]
    for path in dict.fromkeys(paths):
        if not path.exists():
            continue
        manifest = manifest_path(path)
        doc = read_manifest(manifest) if manifest.is_file() else {}
        if doc.get("written_by") != WRITER and ("argv" in doc or not doc):
            raise InputError(f"{path} holds results of another run (not a demo's); the demo leaves them alone: "
                             "choose another --out-dir")
    return True


def _demo(args: argparse.Namespace) -> int:
    from diffsmooth.analysis import plot, summarize, table
    from diffsmooth.cli.certify import pick_device
    from diffsmooth.cli.options import checked_cpu_workers
    from diffsmooth.data import load_dataset
    from diffsmooth.methods import MethodSpec
    from diffsmooth.purification import purification_grid
    from diffsmooth.results import grid_files
    from diffsmooth.runner import Job, RunSpec, run, select_indices
    from diffsmooth import validate
    from diffsmooth.shipped import classifier_name, list_shipped
    from diffsmooth.validate import InputError

    start = time.perf_counter()
    args.out_dir = validate.output_folder(args.out_dir, "--out-dir")
    from diffsmooth.results import INDEX_NAME

    # The demo replaces its own table and figures, never a file of that name in a folder it did not write.
    foreign = [name for name in ("table.md", "certified_accuracy.png", "purification.png")
               if (args.out_dir / name).exists() and not (args.out_dir / INDEX_NAME).is_file()]
    if foreign:
        raise InputError(f"{args.out_dir / foreign[0]} exists in a folder the demo did not write; it is left alone: "
                         "choose another --out-dir")
    if _robust_classifier("gaussian", args.sigma) is None:
        sigmas = sorted(n.rsplit("_", 1)[1] for n in list_shipped() if n.startswith(classifier_name("gaussian", 0.0)[:-4]))
        raise InputError(f"--sigma {args.sigma:g} has no shipped Gaussian classifier (shipped sigmas: "
                         f"{', '.join(sigmas)}); choose one of those")
    device = pick_device(args.device)
    dataset = load_dataset("fashion-mnist", split="test", data_dir=args.data_dir)
    indices = select_indices(len(dataset), max_count=args.max)
    runs = {"RS": MethodSpec("rs", "fashion-mnist", args.sigma)}
    local = None
    if args.robust != "none":
        robust_rs = _robust_classifier(args.robust, args.sigma)
        local = _robust_classifier(args.robust, args.local_sigma)
        if local is None:
            prefix = classifier_name(args.robust, 0.0)[:-len("0.00")]
            shipped = [name[len(prefix):] for name in list_shipped() if name.startswith(prefix)]
            raise InputError(f"no shipped {args.robust} classifier for --local-sigma {args.local_sigma:g} (shipped: "
                             f"{', '.join(shipped)}); choose one of those or --robust none")
        if robust_rs is not None:
            runs[f"RS ({_TITLE[args.robust]})"] = MethodSpec("rs", "fashion-mnist", args.sigma, classifier=robust_rs)
    runs["DDS"] = MethodSpec("dds", "fashion-mnist", args.sigma)
    for label, vote in ((OURS, "soft"), ("DiffSmooth (hard)", "hard")):
        runs[label] = MethodSpec("diffsmooth", "fashion-mnist", args.sigma, classifier=local, m=args.m,
                                 local_sigma=args.local_sigma, vote=vote)
    sequential = args.sampling == "sequential"
    spec = RunSpec("certify", runs["RS"], n0=args.n0, n=args.n, alpha=args.alpha, batch_size=args.batch,
                   seed=args.seed, **(dict(sampling="sequential", n_max=args.n_max, radii=RADII)
                                      if sequential else {}))
    spec.validate()
    samples = f"n_max={args.n_max} (sequential)" if sequential else f"n={args.n}"
    if not args.quiet:
        print(f"certifying {len(indices)} images with {', '.join(runs)} from one noise stream "
              f"(one purification per noisy batch), n0={args.n0}, {samples}", file=sys.stderr)
    # A rerun replaces the demo's own files, never a file of another run in the folder.
    run(Job(spec, dataset.__getitem__, indices, args.out_dir, dataset.info.num_classes, device,
            grid=list(runs.values()), overwrite=_owned_by_demo(args.out_dir, runs.values()),
            manifest_extra={"dataset": {"name": "fashion-mnist", "split": "test"}, "written_by": WRITER},
            progress=not args.quiet,
            cpu_workers=checked_cpu_workers(args.cpu_workers)))
    files = grid_files(args.out_dir, [m.to_dict() for m in runs.values()])
    paths = dict(zip(runs, files.values()))
    summaries = [summarize(path, RADII, label) for label, path in paths.items()]
    text = table(summaries, RADII, acr=not sequential)  # sequential radii stop at the table's: no ACR
    from diffsmooth.files import atomic_write_text

    atomic_write_text(args.out_dir / "table.md", text)
    plot(list(paths.values()), list(paths), args.out_dir / "certified_accuracy.png",
         title=f"Fashion-MNIST, sigma={args.sigma:g}, {samples}, {len(indices)} images")
    purification_grid(runs[OURS], dataset.__getitem__, list(range(min(6, len(dataset)))), args.seed,
                      args.out_dir / "purification.png", device)
    print(f"\nCertified accuracy (%) on the first {len(indices)} Fashion-MNIST test images, sigma={args.sigma:g}, "
          f"n0={args.n0}, {samples}, alpha={args.alpha:g}:\n")
    print(text)
    print(EXPLANATION + (SEQUENTIAL if sequential else ""))
    print(verdict(paths, args.sigma, args.n_max if sequential else args.n, args.alpha, sequential))
    print(f"\nResults, table.md, certified_accuracy.png and purification.png are in {args.out_dir.resolve()} "
          f"({time.perf_counter() - start:.0f} s).")
    return 0


EXPLANATION = (
    "Each cell: % of images classified correctly with a certified l2 radius >= r (each certificate holds with\n"
    "probability 1 - alpha). RS classifies noisy images (with a Gaussian-trained or a robustly trained classifier); "
    "DDS purifies them first;\nDiffSmooth purifies, then votes over m locally noised copies (its local classifier "
    "trained as named by --robust)."
)
SEQUENTIAL = ("\nSequential sampling: each image drew samples in looks until each radius of the table was decided "
              "(samples/img: the mean used, n0 included).")
_TITLE = {"smoothadv": "SmoothAdv", "consistency": "Consistency"}


def _robust_classifier(training: str, sigma: float) -> str | None:
    """The shipped classifier trained with ``training`` for noise ``sigma``, or None when none is shipped."""
    from diffsmooth.shipped import classifier_name, list_shipped

    name = classifier_name(training, sigma)
    return name if name in list_shipped() else None


def verdict(paths: dict[str, Path], sigma: float, n: int, alpha: float, sequential: bool = False) -> str:
    """What the demo's sample says: DiffSmooth (soft) minus RS and DDS at ``RANK_RADII``, paired over
    the images, with standard errors; plainly 'too few images' when no difference exceeds two errors.
    ``n``: the estimation samples (``n_max`` when ``sequential``), which cap the radius."""
    from diffsmooth.analysis import paired_comparison
    from diffsmooth.results import read_results
    from diffsmooth.smoothing import decide
    from diffsmooth.stats import clopper_pearson_lower, look_schedule

    ours = OURS
    # All samples agreeing: the last look's bound (sequential) or Cohen's at n.
    p_lower = look_schedule(n, alpha).lower(-1, n) if sequential else clopper_pearson_lower(n, n, alpha)
    largest = decide(p_lower, sigma) or 0.0
    flag = "--n-max" if sequential else "--n"
    cap = (f"With {flag[2:].replace('-', '_')} = {n}, no radius above {largest:.2f} can be certified "
           f"(all samples agreeing); raise {flag} for more.")
    if len(read_results(paths[ours]).rows) < 2:
        return f"One image cannot rank the methods; MODEL_CARD.md compares them on 500 images.\n{cap}"
    others = [label for label in paths if not label.startswith("DiffSmooth")]
    comparisons = [paired_comparison(paths[ours], paths[other], RANK_RADII, ours, other) for other in others]
    lines = []
    for c in comparisons:
        cells = ", ".join(f"r={r:g}: {100 * c.difference[r]:+.1f} ± {100 * c.standard_error[r]:.1f}" for r in RANK_RADII)
        lines.append(f"{c.label_a} - {c.label_b} (points, paired standard error): {cells}")
    images = comparisons[0].images
    if images < MIN_RANK_IMAGES:
        lines.append(f"{images} images are too few to rank the methods (the errors assume >= {MIN_RANK_IMAGES}). "
                     "MODEL_CARD.md compares them on 500 images.")
    elif not any(c.significant(r) for c in comparisons for r in RANK_RADII):
        lines.append(f"{images} images are too few to rank the methods: no difference exceeds two standard errors. "
                     "MODEL_CARD.md compares them on 500 images.")
    else:
        beyond = [f"{c.label_b} at r={r:g}" for c in comparisons for r in RANK_RADII if c.significant(r)]
        lines.append(f"Beyond two standard errors: {ours} vs {', '.join(beyond)}; {images} images are a small sample "
                     "(MODEL_CARD.md has 500).")
    lines.append(cap)
    return "\n".join(lines)


