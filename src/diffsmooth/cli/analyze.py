"""``diffsmooth analyze``: certified accuracy tables and plots from results TSVs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
    p.add_argument("--plot", type=Path, default=None, help="write certified accuracy vs radius to this PNG/PDF")
    p.add_argument("--title", default=None, help="plot title")
    p.add_argument("--overwrite", action="store_true", help="replace the --plot file if it exists")
    p.set_defaults(func=_analyze)


def _analyze(args: argparse.Namespace) -> int:
    from diffsmooth.analysis import plot, summarize, table
    from diffsmooth.results import read_index
    from diffsmooth.visualize import check_figure_path

    paths, names, attacks = [], [], {}
    for path in args.results:
        if path.is_dir():
            for entry in read_index(path):
                paths.append(entry["path"])
                names.append(entry["label"] if "file_eps" not in entry["spec"] else f"{path.name}:{entry['label']}")
                if "file_eps" in entry["spec"]:
                    attacks.setdefault(path.name, {})[float(entry["spec"]["file_eps"])] = entry["path"]
        else:
            paths.append(path)
            names.append(path.stem)
    args.results = paths
    labels = args.labels or names
    if len(labels) != len(args.results):
        raise InputError(f"--labels gives {len(labels)} names for {len(args.results)} results files; give one each")
    pairs = [pair.split(",") for pair in args.paired]
    for pair, names in zip(args.paired, pairs):
        if len(names) != 2 or any(name not in labels for name in names):
            raise InputError(f"--paired {pair!r}: give two run labels separated by a comma, from: {', '.join(labels)}")
    if any(not (r >= 0) for r in args.radii) or any(r == float("inf") for r in args.radii):
        raise InputError("--radii must be finite numbers >= 0")
    if args.plot is not None:
        check_figure_path(args.plot, "--plot")
        if args.plot.exists() and not args.overwrite:
            raise InputError(f"{args.plot} exists; pass --overwrite to replace it or choose another --plot")
    summaries = [summarize(path, args.radii, label) for path, label in zip(args.results, labels)]
    for path, summary in zip(args.results, summaries):
        if summary.dropped_torn_line:
            print(f"note: dropped the unfinished last line of {path} (a run still writing, or one that was killed)",
                  file=sys.stderr)
    sys.stdout.write(table(summaries, args.radii, args.format, errors=args.errors))
    if args.paired:
        from diffsmooth.analysis import paired_comparison, paired_table

        by_label = dict(zip(labels, args.results))
        comparisons = [paired_comparison(by_label[a], by_label[b], args.radii, a, b) for a, b in pairs]
        sys.stdout.write("\n" + paired_table(comparisons, args.radii))
    if attacks:
        from diffsmooth.analysis import robustness_table

        certified = [(s.label, path) for s, path in zip(summaries, args.results) if s.mode == "certify"]
        sys.stdout.write("\n" + robustness_table(attacks, certified, args.format, errors=args.errors))
    if args.plot is not None:
        certified = [(path, label) for path, label, s in zip(args.results, labels, summaries) if s.mode == "certify"]
        plot([p for p, _ in certified], [label for _, label in certified], args.plot, args.title, attacks=attacks)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0
