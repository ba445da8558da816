"""Certified accuracy tables and curves from results files.

Certified accuracy at radius r is the fraction of all images (abstentions
included, counted as failures) that are classified correctly with a certified
radius of at least r, as in Cohen et al.'s ``analyze.py``; at r = 0 it is the
smoothed classifier's clean accuracy.  The average certified radius (ACR) is
the mean of ``radius * correct`` over all images (Zhai et al. 2020).

Standard errors (``table(..., errors=True)``, ``paired_comparison``) describe the spread over
draws of test images (``stats.proportion_standard_error``, ``stats.paired_difference``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffsmooth.results import Row, read_results
from diffsmooth.stats import paired_difference, proportion_standard_error
from diffsmooth.validate import InputError


@dataclass(frozen=True)
class Summary:
    """One run's numbers. ``certified`` maps radius -> certified accuracy (certify runs only)."""

    label: str
    mode: str
    images: int
    clean_accuracy: float
    abstention_rate: float
    certified: dict[float, float]
    acr: float | None
    seconds_per_image: float | None  # None where the file has no time column
    dropped_torn_line: bool = False
    samples_per_image: float | None = None  # sequential runs: mean estimation samples used


def run_label(path: str | Path) -> str:
    """A run's default name: its file name without a ``.tsv`` / ``.txt`` ending (Cohen et al.'s
    files have none: ``sigma_0.50`` stays whole)."""
    path = Path(path)
    return path.stem if path.suffix.lower() in (".tsv", ".txt") else path.name


def certified_accuracy(rows: Sequence[Row], radius: float) -> float:
    """Fraction of rows correct with certified radius >= ``radius``."""
    if not rows:
        return 0.0
    return sum(1 for r in rows if r.correct and r.radius >= radius) / len(rows)


def summarize(path: Path, radii: Sequence[float], label: str | None = None) -> Summary:
    results = read_results(path)
    mode, rows = results.mode, results.rows
    if not rows:
        raise InputError(f"{path} holds no results yet; run certification first")
    n = len(rows)
    certify = mode == "certify"
    return Summary(
        label=label or run_label(path),
        mode=mode,
        images=n,
        clean_accuracy=sum(r.correct for r in rows) / n,
        abstention_rate=sum(r.predict == -1 for r in rows) / n,
        certified={float(r): certified_accuracy(rows, r) for r in radii} if certify else {},
        acr=sum(r.radius * r.correct for r in rows) / n if certify else None,
        seconds_per_image=(None if any(r.seconds is None for r in rows) else sum(r.seconds for r in rows) / n),
        dropped_torn_line=results.dropped_torn_line,
        samples_per_image=(sum(int(dict(r.extra)["samples"]) for r in rows) / n if "samples" in results.columns
                           else None),
    )


def _percent(fraction: float, images: int, errors: bool) -> str:
    """``fraction`` in percent, with its standard error over test images when ``errors``."""
    if not errors:
        return f"{100 * fraction:.1f}"
    se = proportion_standard_error(round(fraction * images), images)
    return f"{100 * fraction:.1f} ± {100 * se:.1f}"


def table(summaries: Sequence[Summary], radii: Sequence[float], fmt: str = "markdown", errors: bool = False,
          acr: bool = True) -> str:
    """Render summaries as a markdown, csv or latex table (accuracies in percent; with ``errors``
    each certified accuracy carries its standard error over test images, ``72.4 ± 2.0``; without
    ``acr`` no ACR column, for runs whose radii stop at the table's, as sequential fixed-radius runs)."""
    sequential = any(s.samples_per_image is not None for s in summaries)
    head = ["run", "images", *[f"r={r:g}" for r in radii], *(["ACR"] if acr else []), "abstain", "clean acc",
            "s/img"]
    head += ["samples/img"] if sequential else []
    body = []
    for s in summaries:
        cert = [_percent(s.certified[float(r)], s.images, errors) if s.certified else "-" for r in radii]
        mean_radius = [f"{s.acr:.3f}" if s.acr is not None else "-"] if acr else []
        body.append([s.label, str(s.images), *cert, *mean_radius, f"{100 * s.abstention_rate:.1f}",
                     f"{100 * s.clean_accuracy:.1f}",
                     "-" if s.seconds_per_image is None else f"{s.seconds_per_image:.2f}"])
        if sequential:
            body[-1].append("-" if s.samples_per_image is None else f"{s.samples_per_image:.0f}")
    if fmt == "csv":
        return "\n".join(",".join(row) for row in [head, *body]) + "\n"
    if fmt == "latex":
        cols = "l" + "r" * (len(head) - 1)
        lines = [f"\\begin{{tabular}}{{{cols}}}", "\\toprule", " & ".join(_tex(h) for h in head) + " \\\\", "\\midrule"]
        lines += [" & ".join(_tex(c) for c in row) + " \\\\" for row in body]
        lines += ["\\bottomrule", "\\end{tabular}"]
        return "\n".join(lines) + "\n"
    if fmt != "markdown":
        raise InputError(f"unknown table format {fmt!r}; choose markdown, csv or latex")
    return _markdown(head, body)


@dataclass(frozen=True)
class Paired:
    """Certified accuracy of run A minus run B on the same images, per radius: ``difference`` and
    its paired standard error (fractions, not percent)."""

    label_a: str
    label_b: str
    images: int
    difference: dict[float, float]
    standard_error: dict[float, float]

    def significant(self, radius: float, z: float = 2.0) -> bool:
        """Whether the difference at ``radius`` is more than ``z`` standard errors from 0."""
        d, se = self.difference[float(radius)], self.standard_error[float(radius)]
        return abs(d) > z * se if se > 0 else d != 0


def paired_comparison(path_a: Path, path_b: Path, radii: Sequence[float], label_a: str | None = None,
                      label_b: str | None = None) -> Paired:
    """Certified accuracy of ``path_a`` minus ``path_b`` per radius, paired over their images.

    Both certify runs must hold the same images (matched by ``idx``); raises ``InputError`` otherwise.
    """
    runs = []
    for path in (path_a, path_b):
        results = read_results(path)
        if results.mode != "certify":
            raise InputError(f"{path} is a {results.mode} result; a paired comparison needs two certify results")
        runs.append({r.idx: r for r in results.rows})
    a, b = runs
    if set(a) != set(b):
        only = sorted(set(a) ^ set(b))
        raise InputError(f"{path_a} and {path_b} hold different images (e.g. idx {only[0]}); compare runs "
                         "over the same images (same --max/--skip, both finished)")
    differ = [i for i in sorted(a) if a[i].label != b[i].label]
    if differ:
        i = differ[0]
        raise InputError(f"{path_a} and {path_b} give idx {i} the labels {a[i].label} and {b[i].label}: they are "
                         "not the same images (another dataset or split?); pair runs over the same images")
    order = sorted(a)
    difference, standard_error = {}, {}
    for radius in radii:
        passes = lambda run: [run[i].correct and run[i].radius >= radius for i in order]  # noqa: E731
        difference[float(radius)], standard_error[float(radius)] = paired_difference(passes(a), passes(b))
    return Paired(label_a or run_label(path_a), label_b or run_label(path_b), len(order), difference,
                  standard_error)


def paired_table(comparisons: Sequence[Paired], radii: Sequence[float]) -> str:
    """Markdown table: per comparison and radius, ``A - B`` in percentage points ± its paired
    standard error, starred where it is more than two standard errors from 0."""
    head = ["A - B (points)", "images", *[f"r={r:g}" for r in radii]]
    body = []
    for c in comparisons:
        cells = [f"{100 * c.difference[float(r)]:+.1f} ± {100 * c.standard_error[float(r)]:.1f}"
                 + ("*" if c.significant(r) else "") for r in radii]
        body.append([f"{c.label_a} - {c.label_b}", str(c.images), *cells])
    return _markdown(head, body)


def robustness_table(attacks: dict[str, dict[float, Path]], certified: Sequence[tuple[str, Path]],
                     fmt: str = "markdown", errors: bool = False) -> str:
    """Empirical robust accuracy (PREDICT correct at the attacked point: an upper bound on the true
    robust accuracy) per eps, beside certified accuracy at radius eps (a lower bound), in percent;
    with ``errors`` each cell carries its standard error over test images.

    Certified accuracy is taken over the attacked images only (matched by ``idx``), so that a
    certify run over more images (the model card's 500 beside an attack on the first 100) is read
    on the same images as the attack; its ``images`` column says how many it holds of them."""
    radii = sorted({eps for runs in attacks.values() for eps in runs})
    attacked = _attacked_images(attacks)
    summaries = []
    for label, runs in attacks.items():
        values = {eps: summarize(path, ()).clean_accuracy for eps, path in runs.items()}
        summaries.append(Summary(f"empirical: {label}", "attack", max(summarize(p, ()).images for p in runs.values()),
                                 0.0, 0.0, {float(e): values.get(e, float("nan")) for e in radii}, None, 0.0))
    for label, path in certified:
        rows = certified_rows(path, attacked)
        summaries.append(Summary(f"certified: {label}", "certify", len(rows), 0.0, 0.0,
                                 {float(r): certified_accuracy(rows, r) for r in radii}, None, 0.0))
    return _short_table(summaries, radii, fmt, errors)


def _attacked_images(attacks: dict[str, dict[float, Path]]) -> set[int]:
    """The ``idx`` of every image some attack file holds."""
    return {r.idx for runs in attacks.values() for path in runs.values() for r in read_results(path).rows}


def certified_rows(path: Path, images: set[int] | None = None) -> list[Row]:
    """The rows of certify results ``path``, only those whose ``idx`` is in ``images`` when given.

    Raises ``InputError`` for PREDICT results (they certify no radius) and when ``images`` leaves no row."""
    results = read_results(path)
    if results.mode != "certify":
        raise InputError(f"{path} holds PREDICT results, which certify no radius; plot CERTIFY results")
    if images is None:
        return results.rows
    rows = [r for r in results.rows if r.idx in images]
    if not rows:
        raise InputError(f"{path} holds none of the attacked images; certify the images the attack ran on")
    return rows


def _short_table(summaries: Sequence[Summary], radii: Sequence[float], fmt: str, errors: bool = False) -> str:
    full = table(summaries, radii, fmt, errors=errors)
    keep = 2 + len(radii)  # run, images, one column per radius
    if fmt == "csv":
        return "\n".join(",".join(line.split(",")[:keep]) for line in full.splitlines()) + "\n"
    if fmt == "latex":
        return full  # the extra columns read "-" there; a paper table is edited by hand anyway
    lines = full.splitlines()
    return "\n".join("|".join(line.split("|")[: keep + 1]) + "|" for line in lines) + "\n"


def _markdown(head: list[str], body: list[list[str]]) -> str:
    """A markdown table: first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    line = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"  # noqa: E731
    rule = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), rule, *[line(row) for row in body]]) + "\n"


def _tex(text: str) -> str:
    return text.replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$")


def plot(paths: Sequence[Path], labels: Sequence[str], out: Path, title: str | None = None,
         attacks: dict[str, dict[float, Path]] | None = None) -> None:
    """Certified accuracy against radius for several runs in one figure (PNG/PDF by suffix); with
    ``attacks`` (label -> eps -> attack TSV) the empirical robust accuracy per eps as markers: an upper
    bound to read against the certified curves' lower bound, which are then drawn over the attacked
    images only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffsmooth.visualize import save_figure

    attacked = _attacked_images(attacks) if attacks else None
    curves = [certified_rows(path, attacked) for path in paths]
    points = {label: sorted((eps, summarize(path, ()).clean_accuracy) for eps, path in runs.items())
              for label, runs in (attacks or {}).items()}
    top = max([r.radius for rows in curves for r in rows if r.correct]
              + [eps for pts in points.values() for eps, _ in pts], default=1.0)
    grid = np.linspace(0.0, max(top, 1e-3) * 1.05, 400)
    many = len(labels) + len(points) > 5  # more curves than fit beside the legend: the legend goes right
    fig, ax = plt.subplots(figsize=(8.0 if many else 5.5, 3.8), dpi=150)
    for rows, label in zip(curves, labels):
        ax.plot(grid, [certified_accuracy(rows, r) for r in grid], label=f"certified: {label}", linewidth=1.8)
    for label, pts in points.items():
        ax.plot([e for e, _ in pts], [a for _, a in pts], "o--", label=f"empirical (attack): {label}", markersize=5)
    ax.set_xlabel(r"radius ($\ell_2$)")
    ax.set_ylabel("accuracy: certified (lines), empirical (markers)" if points else "certified accuracy")
    ax.set_ylim(0, 1)
    ax.set_xlim(0, grid[-1])
    ax.grid(alpha=0.3)
    if many:
        ax.legend(frameon=False, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(frameon=False)
    if title:
        ax.set_title(title, fontsize="medium")  # a long run title fits the 5.5-inch figure
    fig.tight_layout()
    save_figure(fig, out)
    plt.close(fig)
