"""``diffsmooth analyze``: certified accuracy tables and plots from results TSVs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffsmooth import validate
from diffsmooth.validate import InputError

DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)


def register(sub, formatter) -> None:
    p = sub.add_parser(
        "analyze",
        formatter_class=formatter,
        help="certified accuracy table and plot of results files",
        description="Print, per results file, certified accuracy at the given radii (correct and radius >= r, "
        "over all images, abstentions counted as wrong), the average certified radius, the abstention rate and "
        "the clean accuracy of the smoothed classifier. Reads the Cohen et al. TSV format.",
    )
    p.add_argument("results", nargs="+", type=Path,
                   help="results TSV files, or folders written by `certify --out-dir` (their index.json lists them)")
    p.add_argument("--radii", type=float, nargs="+", default=list(DEFAULT_RADII), help="radii of the table")
    p.add_argument("--labels", nargs="+", default=None, help="one name per results file (default: file names)")
    p.add_argument("--format", choices=("markdown", "csv", "latex"), default="markdown", help="table format")
    p.add_argument("--errors", action="store_true",
                   help="give each certified (and empirical robust) accuracy its standard error over test "
                        "images (72.4 ± 2.0)")
    p.add_argument("--paired", nargs="+", default=[], metavar="A,B",
                   help="also print certified accuracy of run A minus run B (labels as in the table) per radius, "
                   "paired over the same images, with its standard error; * marks differences beyond 2 errors")
    p.add_argument("--published", default=None, metavar="NAME",
                   help="also print each run beside a published row (a name of `diffsmooth.published.list_published()`, "
                   "e.g. cohen-cifar10-0.25, or a recipe's name: its row at the run's sigma), at the published radii "
                   "(or --radii), with the difference and the binomial standard error over the run's images")
    p.add_argument("--plot", default=None, help="write certified accuracy vs radius to this PNG/PDF")
    p.add_argument("--title", default=None, help="plot title")
    p.add_argument("--overwrite", action="store_true", help="replace the --plot file if it exists")
    p.set_defaults(func=_analyze)


def _analyze(args: argparse.Namespace) -> int:
    from diffsmooth.analysis import plot, run_label, summarize, table
    from diffsmooth.results import read_index
    from diffsmooth.visualize import check_figure_path

    paths, names, attacks = [], [], {}
    for path in args.results:
        if path.is_dir():
            entries = read_index(path)
            if not entries:
                raise InputError(f"{path / 'index.json'} lists no runs; certify into the folder first, or give "
                                 "results TSVs")
            for entry in entries:
                paths.append(entry["path"])
                names.append(entry["label"] if "file_eps" not in entry["spec"] else f"{path.name}:{entry['label']}")
                if "file_eps" in entry["spec"]:
                    attacks.setdefault(path.name, {})[float(entry["spec"]["file_eps"])] = entry["path"]
        else:
            paths.append(path)
            names.append(run_label(path))
    args.results = paths
    labels = args.labels or _distinct(names, paths)
    if len(labels) != len(args.results):
        raise InputError(f"--labels gives {len(labels)} names for {len(args.results)} results files; give one each")
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise InputError(f"label {twice[0]!r} names two results files; give each its own with --labels")
    pairs = [pair.split(",") for pair in args.paired]
    for pair, names in zip(args.paired, pairs):
        if len(names) != 2 or any(name not in labels for name in names):
            raise InputError(f"--paired {pair!r}: give two run labels separated by a comma, from: {', '.join(labels)}")
    if any(not (r >= 0) for r in args.radii) or any(r == float("inf") for r in args.radii):
        raise InputError("--radii must be finite numbers >= 0")
    if args.plot is not None:
        args.plot = check_figure_path(args.plot, "--plot")
        validate.not_replaced([args.plot], args.overwrite, "figure", "--plot")
    summaries = [summarize(path, args.radii, label) for path, label in zip(args.results, labels)]
    for path, summary in zip(args.results, summaries):
        if summary.dropped_torn_line:
            print(f"note: dropped the unfinished last line of {path} (a run still writing, or one that was killed)",
                  file=sys.stderr)
    # Everything is computed (and checked) before anything is printed: an error prints alone.
    text = table(summaries, args.radii, args.format, errors=args.errors)
    if args.paired:
        from diffsmooth.analysis import paired_comparison, paired_table

        by_label = dict(zip(labels, args.results))
        comparisons = [paired_comparison(by_label[a], by_label[b], args.radii, a, b) for a, b in pairs]
        text += "\n" + paired_table(comparisons, args.radii)
    if attacks:
        from diffsmooth.analysis import robustness_table

        certified = [(s.label, path) for s, path in zip(summaries, args.results) if s.mode == "certify"]
        text += "\n" + robustness_table(attacks, certified, args.format, errors=args.errors)
    if args.published is not None:
        text += "".join("\n" + _beside(args, path, label) + "\n" for path, label in zip(args.results, labels))
    sys.stdout.write(text)
    if args.plot is not None:
        certified = [(path, label) for path, label, s in zip(args.results, labels, summaries) if s.mode == "certify"]
        plot([p for p, _ in certified], [label for _, label in certified], args.plot, args.title, attacks=attacks)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _beside(args: argparse.Namespace, path: Path, label: str) -> str:
    """The run at ``path`` beside the published row ``args.published`` (see ``diffsmooth.published``)."""
    from diffsmooth.analysis import summarize
    from diffsmooth.cli.options import typed_options
    from diffsmooth.published import beside, beside_text, get_published
    from diffsmooth.results import manifest_path, read_manifest

    manifest = manifest_path(path)
    spec = read_manifest(manifest).get("spec", {}) if manifest.is_file() else {}
    sigma = spec.get("method", {}).get("sigma")
    entry = get_published(args.published, sigma)
    if sigma is not None and abs(sigma - entry.sigma) > 1e-9:
        raise InputError(f"{path} was certified at sigma {sigma:g}, {entry.name} at sigma {entry.sigma:g}; compare it "
                         "with a row of its own sigma")
    dataset = spec.get("method", {}).get("dataset")
    if dataset is not None and dataset != entry.dataset:
        raise InputError(f"{path} is a {dataset} run, {entry.name} a {entry.dataset} one; compare it with a "
                         f"{dataset} row")
    radii = args.radii if "radii" in typed_options(args) else sorted(entry.certified)
    summary = summarize(path, radii, label)
    if summary.mode != "certify":
        raise InputError(f"{path} holds predictions, not certificates; --published compares certified accuracy")
    return beside_text(beside(entry, summary.certified, summary.images, radii), label)


def _distinct(names: list[str], paths: list[Path]) -> list[str]:
    """File-name labels, the folder prepended where two files share a name (x/r.tsv, y/r.tsv -> x/r, y/r)."""
    return [f"{Path(path).parent.name}/{name}" if names.count(name) > 1 else name for name, path in zip(names, paths)]
