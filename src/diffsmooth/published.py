"""Published certified accuracies, as data, to put a run beside.

``published.json`` beside this module holds them: per entry the paper, the table or file it was read
from (``owner/repository:path`` at the commit under ``references``), the dataset, sigma, the setting
the number needs (classifier, N, alpha, images), the recipe that reproduces that setting, the number
of images behind it and the certified accuracy per radius as a fraction in [0, 1], published with
``decimals`` decimals. ``beside`` compares a run's rows with one entry.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from diffsmooth import validate
from diffsmooth.validate import InputError


@dataclass(frozen=True)
class Published:
    """One published row: ``certified`` maps radius -> fraction (rounded to ``decimals``)."""

    name: str
    paper: dict[str, str]
    table: str
    source: str
    commit: str
    dataset: str
    sigma: float
    recipe: str | None
    setting: str
    images: int
    decimals: int
    certified: dict[float, float]


def list_published() -> list[str]:
    """The entry names, sorted."""
    return sorted(_entries())


def get_published(name: str, sigma: float | None = None) -> Published:
    """The entry called ``name``, or, for a recipe's name, its entry at ``sigma``; unknown names raise
    ``InputError`` listing the known ones."""
    entries = _entries()
    if name in entries:
        return entries[name]
    by_recipe = [e for e in entries.values() if e.recipe == name]
    if by_recipe:
        if sigma is None:
            raise InputError(f"recipe {name} has published rows at sigma {', '.join(f'{e.sigma:g}' for e in by_recipe)}; "
                             f"name one ({', '.join(e.name for e in by_recipe)}) or give a run that records its sigma")
        match = [e for e in by_recipe if math.isclose(e.sigma, sigma)]
        if not match:
            raise InputError(f"recipe {name} has no published row at sigma {sigma:g} (published: "
                             f"{', '.join(f'{e.sigma:g}' for e in by_recipe)})")
        return match[0]
    return entries[validate.choice(name, "published entry (or recipe)", list_published())]


@dataclass(frozen=True)
class Beside:
    """A run beside a published row, per radius: the run's certified accuracy, its binomial standard
    error over the run's images, the published value and the difference (run minus published)."""

    entry: Published
    images: int
    rows: list[tuple[float, float, float, float, float]]  # radius, run, se, published, difference


def beside(entry: Published, certified: dict[float, float], images: int,
           radii: Sequence[float] | None = None) -> Beside:
    """Compare a run's ``certified`` (radius -> fraction over ``images`` images) with ``entry`` at
    ``radii`` (default: the entry's)."""
    from diffsmooth.stats import proportion_standard_error

    radii = sorted(entry.certified) if radii is None else list(radii)
    missing = [r for r in radii if r not in entry.certified]
    if missing:
        raise InputError(f"{entry.name} publishes no value at radius {missing[0]:g} (published radii: "
                         f"{', '.join(f'{r:g}' for r in sorted(entry.certified))}); choose among those")
    rows = []
    for r in radii:
        ours = certified[r]
        se = proportion_standard_error(round(ours * images), images)
        rows.append((r, ours, se, entry.certified[r], ours - entry.certified[r]))
    return Beside(entry, images, rows)


def beside_text(result: Beside, label: str) -> str:
    """The comparison as a markdown table in percent, with the entry's source and setting beneath."""
    e = result.entry
    half = 50 / 10 ** e.decimals  # the published value's rounding, in points
    lines = [f"{label} ({result.images} images) beside {e.name}: {e.paper['authors']}, {e.paper['title']} "
             f"({e.paper['venue']})",
             "| radius | run | published | run - published |", "|---:|---:|---:|---:|"]
    for r, ours, se, theirs, diff in result.rows:
        lines.append(f"| {r:g} | {100 * ours:.1f} ± {100 * se:.1f} | {100 * theirs:.{max(e.decimals - 2, 0)}f} | "
                     f"{100 * diff:+.1f} |")
    lines += [f"published: {e.table}; {e.source} at {e.commit[:12]}; {e.images} images, rounded to {e.decimals} "
              f"decimals (± {half:g} points)",
              f"setting: {e.setting}" + (f" (recipe {e.recipe})" if e.recipe else ""),
              "± is the binomial standard error of the run's certified accuracy over its images."]
    return "\n".join(lines)


@cache
def _entries() -> dict[str, Published]:
    doc: dict[str, Any] = json.loads(resources.files("diffsmooth").joinpath("published.json").read_text())
    out = {}
    for name, e in doc["entries"].items():
        repository = e["source"].split(":", 1)[0]
        out[name] = Published(
            name=name, paper=doc["papers"][e["paper"]], table=e["table"], source=e["source"],
            commit=doc["references"][repository]["commit"], dataset=e["dataset"], sigma=float(e["sigma"]),
            recipe=e.get("recipe"), setting=e["setting"], images=int(e["images"]), decimals=int(e["decimals"]),
            certified={float(r): float(v) for r, v in e["certified"].items()})
    return out
