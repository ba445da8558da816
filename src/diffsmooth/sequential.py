"""When sequential CERTIFY stops an image: its options, its stopping rules and its looks.

Sequential CERTIFY (``SmoothedClassifier.certify_sequential_batch``) selects the class on ``n0``
samples as CERTIFY does, then draws the estimation samples in looks of a geometric schedule
(``stats.look_schedule``) and reads an anytime-valid lower bound at each look
(``stats.sequential_lower``).  This module decides after each look whether an image is done;
stopping never spends alpha (it only withholds a larger claim), so the rules may use heuristic
projections.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffsmooth import validate
from diffsmooth.stats import FIRST_LOOK, LookSchedule, clopper_pearson_upper, sequential_lower
from diffsmooth.validate import InputError

FUTILITY_ALPHA = 1e-3
"""Level of the optimistic upper bound behind the futility rule (spends no alpha: stopping
for futility only withholds a claim)."""

STOPS = ("cap", "futile", "tolerance", "budget")
"""Why an image stopped: ``"cap"`` (radius reached ``max_radius``, or every radius asked is
certified), ``"futile"`` (even an optimistic continuation to ``n_max`` could not certify the
smallest radius still open), ``"tolerance"`` (continuing would raise the radius by less than the
tolerance), ``"budget"`` (``n_max`` used)."""


def _radius(name: str, value: object) -> float:
    return validate.number(value, name, minimum=0, what="radius", hint=" in [0,1] pixel units")


@dataclass(frozen=True)
class SequentialOptions:
    """The question sequential CERTIFY settles for each image, and its looks.

    Two modes:

    - radius mode (``radii`` None): the largest radius, stopping at ``max_radius`` (None: no
      cap), when no radius >= ``min_radius`` can be reached, or when the radius that ``n_max``
      samples would give if the observed proportion stayed exceeds the current one by less than
      ``tolerance`` (0: never stop for that; an image that still abstains never does);
    - fixed-radius mode (``radii`` given): decide "radius >= r" for each r, stopping once all are
      certified or the smallest uncertified one can no longer be.

    ``n_first``, ``ratio``: the looks, at ``n_first * ratio^j`` samples up to ``n_max``.
    Radii are l2 distances in [0,1] pixel units; ``radii`` is kept sorted, without repeats.
    """

    radii: tuple[float, ...] | None = None
    max_radius: float | None = None
    min_radius: float = 0.0
    tolerance: float = 0.0
    n_first: int = FIRST_LOOK
    ratio: float = 2.0

    def __post_init__(self) -> None:
        if self.radii is not None:
            if self.max_radius is not None or self.min_radius != 0.0 or self.tolerance != 0.0:
                raise InputError(
                    "radii (fixed-radius mode) excludes max_radius, min_radius and tolerance (radius mode); "
                    "give one mode"
                )
            radii = self.radii
            if isinstance(radii, (str, bytes)) or not isinstance(radii, Sequence) or len(radii) == 0:
                raise InputError(f"radii must be a non-empty list of radii, got {radii!r}")
            object.__setattr__(self, "radii", tuple(sorted({_radius("radii", r) for r in radii})))
        else:
            cap = None if self.max_radius is None else _radius("max_radius", self.max_radius)
            low = _radius("min_radius", self.min_radius)
            if cap is not None and low > cap:
                raise InputError(f"min_radius {low} exceeds max_radius {cap}; lower min_radius or raise max_radius")
            object.__setattr__(self, "max_radius", cap)
            object.__setattr__(self, "min_radius", low)
            object.__setattr__(self, "tolerance", _radius("tolerance", self.tolerance))
        validate.whole(self.n_first, "n_first")
        object.__setattr__(self, "ratio", validate.number(
            self.ratio, "ratio", above=1, hint=" (the growth of the looks, e.g. 2)"))


class StopRule:
    """Whether an image stops after a look.

    ``radius_of(p_lower)``: the radius a lower bound certifies, None where the smoothed
    classifier abstains (``smoothing.decide`` for the run's sigma).
    """

    def __init__(self, options: SequentialOptions, radius_of: Callable[[float], float | None]) -> None:
        self.options = options
        self.radius_of = radius_of

    def reaches(self, p_lower: float, r: float) -> bool:
        radius = self.radius_of(p_lower)
        return radius is not None and radius >= r

    def stop(self, p_lower: float, n_a: int, n: int, schedule: LookSchedule) -> str | None:
        """Why to stop after ``n_a`` of ``n`` samples with bound ``p_lower`` (one of ``STOPS``), or None."""
        o = self.options
        last = len(schedule.sizes) - 1
        if o.radii:
            pending = [r for r in o.radii if not self.reaches(p_lower, r)]
            if not pending:
                return "cap"
        elif o.max_radius is not None and self.reaches(p_lower, o.max_radius):
            return "cap"
        if n >= schedule.n_max:
            return "budget"
        # Futility: the bound n_max would give if the rest came at an optimistic rate.
        rest = schedule.n_max - n
        upper = clopper_pearson_upper(n_a, n, FUTILITY_ALPHA)
        best = max(p_lower, schedule.lower(last, n_a + math.floor(upper * rest)))
        if not self.reaches(best, pending[0] if o.radii else o.min_radius):
            return "futile"
        if o.tolerance > 0 and p_lower >= 0.5:
            # Tolerance (never while abstaining): the radius that n_max samples would give
            # if the observed proportion stayed.
            likely = max(p_lower, schedule.lower(last, n_a + math.floor(n_a / n * rest)))
            cap = math.inf if o.max_radius is None else o.max_radius
            gain = min(self.radius_of(likely) or 0.0, cap) - min(self.radius_of(p_lower) or 0.0, cap)
            if gain < o.tolerance:
                return "tolerance"
        return None


@dataclass
class Looked:
    """One image under one configuration after its looks: estimation ``counts`` (num_classes,), the
    cumulative successes of the selected class at each look taken, the anytime-valid ``p_lower``
    and why it stopped."""

    counts: Tensor
    successes: list[int]
    p_lower: float
    stop: str


def estimate_in_looks(draw: Callable[[list[int], int, tuple[int, ...]], Tensor], selected: Sequence[Sequence[int]],
                      num_classes: int, schedule: LookSchedule, rule: StopRule) -> list[list[Looked]]:
    """The estimation draw of sequential CERTIFY, look by look, for K images under C configurations
    (a grid base; C = 1 otherwise).

    ``draw(rows, count, configs)`` returns the class counts ``(len(rows), C, num_classes)`` of ``count``
    fresh samples for each image in ``rows`` (indices into 0..K-1), continuing each image's own noise
    stream; only the configurations ``configs`` (those still running for every image of ``rows``) need
    be counted, the others' counts are ignored; ``selected[i][c]`` is configuration c's class for
    image i from the selection draw.
    Each (image, configuration) stops by ``rule`` on its own counts; an image draws while any of
    its configurations runs, and a stopped configuration ignores the samples drawn after its stop,
    so its result is the one it gets alone from the same stream.  In each round every running
    image draws its next chunk (they share forward batches); images that stop leave.
    """
    k, c = len(selected), len(selected[0]) if selected else 0
    estimation = torch.zeros(k, c, num_classes, dtype=torch.long)
    p_lower = [[0.0] * c for _ in range(k)]
    stops: list[list[str | None]] = [[None] * c for _ in range(k)]
    successes: list[list[list[int]]] = [[[] for _ in range(c)] for _ in range(k)]
    drawn = 0
    for size in schedule.sizes:
        # Running images grouped by their running configurations: each group's draw computes only those.
        groups: dict[tuple[int, ...], list[int]] = {}
        for i in range(k):
            running_configs = tuple(j for j in range(c) if stops[i][j] is None)
            if running_configs:
                groups.setdefault(running_configs, []).append(i)
        if not groups:
            break
        fresh_of: dict[int, Tensor] = {}
        for configs, rows in sorted(groups.items()):
            fresh = draw(rows, size - drawn, configs)
            fresh_of.update({i: fresh[row] for row, i in enumerate(rows)})
        drawn = size
        for i, fresh_i in sorted(fresh_of.items()):
            for j in (j for j in range(c) if stops[i][j] is None):
                estimation[i, j] += fresh_i[j]
                successes[i][j].append(int(estimation[i, j, selected[i][j]]))
                p_lower[i][j] = sequential_lower(successes[i][j], schedule)[-1]
                stops[i][j] = rule.stop(p_lower[i][j], successes[i][j][-1], size, schedule)
    return [[Looked(estimation[i, j], successes[i][j], p_lower[i][j], stops[i][j] or "budget") for j in range(c)]
            for i in range(k)]
