"""Audit certificates with an attack: do certified points stay put inside their radius?

For every certified-correct row (class c = label, radius R > 0) the smoothed classifier
is attacked inside ``fraction * R`` (0.95 by default), and ``p_c``, the probability of c
under the smoothing noise at the attacked point ``x + delta``, is estimated from ``n``
fresh samples with a two-sided (1 - alpha) Clopper-Pearson interval ``[lo, hi]``.

A correct certificate says ``p_c(x) >= p_lower = Phi(R / sigma)`` (with probability
``1 - alpha_certify``) and so, ``Phi^-1(p_c)`` being ``1/sigma``-Lipschitz,
``p_c(x + delta) >= Phi(Phi^-1(p_lower) - ||delta|| / sigma) > 1/2``.  Two kinds of
violation are counted:

- ``flipped``: ``hi < 1/2``, the smoothed prediction moved off c inside the radius;
- ``below_bound``: ``hi`` below Cohen's bound at ``||delta||`` (every flip is one too).

Violations arise from a wrong certificate (probability <= alpha_certify each) or a
wrong interval (<= alpha / 2 each, one-sided use), so about
``(alpha_certify + alpha / 2) * audited`` are expected at most; many more means the
certifier (or the base it ran) is broken.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from diffsmooth import validate
from diffsmooth.attacks.pgd import AttackConfig, attack
from diffsmooth.sampling import Generators, per_image_generators
from diffsmooth.smoothing import SmoothedClassifier
from diffsmooth.stats import clopper_pearson_interval, p_lower_for_radius, probability_lower_at_distance
from diffsmooth.validate import InputError

# Phi(8.2) rounds to 1 in float64: no sample count certifies a radius beyond 8.2 sigma.
_MAX_RADIUS_IN_SIGMAS = 8.2


class CertifyRow(Protocol):
    """What the audit reads of a certify result row (``diffsmooth.results.Row`` fits)."""

    idx: int
    label: int
    predict: int
    radius: float | None
    correct: int


@dataclass(frozen=True)
class AuditRecord:
    """The audit of one certified-correct row.

    Attributes:
        idx, label, radius: the row's (label = the certified class).
        eps: the attack's l2 budget, ``fraction * radius``.
        perturbation_norm: ``||delta||`` of the attack found (<= eps).
        count: samples of the label among the ``n`` at ``x + delta``.
        p_lower, p_upper: the two-sided (1 - alpha) Clopper-Pearson interval on p_c there.
        bound: Cohen's bound ``Phi(Phi^-1(Phi(radius / sigma)) - ||delta|| / sigma)``.
        flipped: ``p_upper < 1/2``.
        below_bound: ``p_upper < bound``.
        seconds: attack plus sampling time.
    """

    idx: int
    label: int
    radius: float
    eps: float
    perturbation_norm: float
    count: int
    n: int
    p_lower: float
    p_upper: float
    bound: float
    flipped: bool
    below_bound: bool
    seconds: float


@dataclass(frozen=True)
class AuditReport:
    """An audit's records and counts.

    ``expected_at_most``: ``(certify_alpha + alpha / 2) * audited``, what correct
    certificates produce at most on average.
    """

    records: tuple[AuditRecord, ...]
    audited: int
    flipped: int
    below_bound: int
    certify_alpha: float
    alpha: float
    expected_at_most: float

    def to_dict(self) -> dict[str, Any]:
        """The counts (not the records), JSON-able, for a manifest."""
        return {
            "audited": self.audited,
            "flipped": self.flipped,
            "below_bound": self.below_bound,
            "certify_alpha": self.certify_alpha,
            "alpha": self.alpha,
            "expected_at_most": self.expected_at_most,
        }


def check_certify_rows(rows: Sequence[CertifyRow], sigma: float) -> None:
    """Raise ``InputError`` unless ``rows`` look like the rows of a CERTIFY run at ``sigma``."""
    if len(rows) == 0:
        raise InputError("no rows to audit; give the rows of a `diffsmooth certify` results TSV")
    for number, row in enumerate(rows, start=1):
        where = f"row {number} (idx {getattr(row, 'idx', '?')})"
        if not all(hasattr(row, name) for name in ("idx", "label", "predict", "radius", "correct")):
            raise InputError(f"{where} is not a certify row (idx label predict radius correct); "
                             "audit the TSV written by `diffsmooth certify`")
        if row.radius is None:
            raise InputError(f"{where} has no radius: it is a predict or attack row, not a certify row; "
                             "audit the TSV written by `diffsmooth certify`")
        radius = float(row.radius)
        if not (radius >= 0 and math.isfinite(radius)):
            raise InputError(f"{where} has radius {row.radius!r}; a certify row's radius is a finite number >= 0")
        if row.predict == -1 and radius != 0:
            raise InputError(f"{where} abstains (predict -1) with radius {radius}; a certify row is not consistent so")
        if int(row.correct) != int(row.predict == row.label):
            raise InputError(f"{where} says correct={row.correct} for predict {row.predict} and label {row.label}; "
                             "not a consistent certify row")
        if radius > _MAX_RADIUS_IN_SIGMAS * sigma:
            raise InputError(f"{where} has radius {radius}, more than any sample count certifies at sigma={sigma}; "
                             "audit with the sigma the rows were certified at")


def auditable_rows(rows: Sequence[CertifyRow], sigma: float) -> list[CertifyRow]:
    """The certified-correct rows (label predicted, radius > 0), after ``check_certify_rows``."""
    check_certify_rows(rows, sigma)
    return [row for row in rows if row.predict == row.label and row.predict != -1 and float(row.radius) > 0]


@dataclass(frozen=True)
class AuditSettings:
    """How certificates are audited: the ``attack`` (``target="smoothed"`` is the audit's), ``n``
    fresh samples at each attacked point, the two-sided interval's level ``alpha``, the largest
    noisy ``batch_size`` while sampling, and the attack's budget as a ``fraction`` of each radius."""

    attack: AttackConfig
    n: int
    alpha: float
    batch_size: int
    fraction: float = 0.95

    def __post_init__(self) -> None:
        validate.whole(self.n, "n")
        validate.alpha(self.alpha)
        validate.whole(self.batch_size, "batch_size")
        if not (isinstance(self.fraction, (int, float)) and 0 < self.fraction < 1):
            raise InputError(f"fraction must lie strictly between 0 and 1 (e.g. 0.95), got {self.fraction!r}")


def audit_rows(
    smoothed: SmoothedClassifier,
    rows: Sequence[CertifyRow],
    xs: Tensor,
    settings: AuditSettings,
    generators: Generators = None,
    sample_generators: Generators = None,
) -> list[AuditRecord]:
    """Audit certified-correct ``rows`` whose images are ``xs``.

    Args:
        smoothed: the smoothed classifier that produced the rows (same base and sigma).
        rows: certified-correct rows (``auditable_rows``), one per image of ``xs``.
        xs: ``(K, C, H, W)`` their clean images in [0,1].
        settings: the attack, the sampling at each attacked point and the budget's fraction.
        generators: one per image; the attack then the sampling draw from it.  They must
            be independent of the certify run's (another seed): "fresh samples".
        sample_generators: the sampling's own generators (processes sharing samples).
    Returns:
        one ``AuditRecord`` per row.
    """
    if len(rows) != xs.shape[0]:
        raise InputError(f"rows and images differ in number: {len(rows)} rows for {xs.shape[0]} images")
    check_certify_rows(rows, smoothed.sigma)
    not_certified = [row.idx for row in rows if not (row.predict == row.label and float(row.radius) > 0)]
    if not_certified:
        raise InputError(f"rows {not_certified[:5]} are not certified-correct; filter them with auditable_rows first")
    k = xs.shape[0]
    gens = per_image_generators(generators, k)
    sample_gens = gens if sample_generators is None else per_image_generators(sample_generators, k)
    labels = [int(row.label) for row in rows]
    radii = [float(row.radius) for row in rows]
    start = time.perf_counter()
    fraction, n = settings.fraction, settings.n
    result = attack(smoothed, xs, labels, [fraction * r for r in radii], settings.attack, gens)
    counts = smoothed.sample_counts(result.x_adv, n, settings.batch_size, sample_gens).cpu()
    seconds = (time.perf_counter() - start) / k
    records = []
    for i, row in enumerate(rows):
        count = int(counts[i, labels[i]])
        lower, upper = clopper_pearson_interval(count, n, settings.alpha)
        norm = float(result.perturbation_norm[i])
        bound = probability_lower_at_distance(p_lower_for_radius(radii[i], smoothed.sigma), norm, smoothed.sigma)
        records.append(
            AuditRecord(
                idx=int(row.idx),
                label=labels[i],
                radius=radii[i],
                eps=fraction * radii[i],
                perturbation_norm=norm,
                count=count,
                n=n,
                p_lower=lower,
                p_upper=upper,
                bound=bound,
                flipped=upper < 0.5,
                below_bound=upper < bound,
                seconds=seconds,
            )
        )
    return records


def summarize_audit(records: Sequence[AuditRecord], certify_alpha: float, alpha: float) -> AuditReport:
    """Count the violations of ``records``; ``certify_alpha`` is the alpha the rows were certified at."""
    validate.alpha(certify_alpha, "certify_alpha")
    validate.alpha(alpha)
    return AuditReport(
        records=tuple(records),
        audited=len(records),
        flipped=sum(r.flipped for r in records),
        below_bound=sum(r.below_bound for r in records),
        certify_alpha=float(certify_alpha),
        alpha=float(alpha),
        expected_at_most=(certify_alpha + alpha / 2) * len(records),
    )


def audit(
    smoothed: SmoothedClassifier,
    rows: Sequence[CertifyRow],
    images: Callable[[int], tuple[Tensor, int]],
    settings: AuditSettings,
    certify_alpha: float,
    generator_for: Callable[[int], torch.Generator | None] | None = None,
    group: int = 1,
    device: torch.device | str = "cpu",
) -> AuditReport:
    """Audit every certified-correct row of a certify run (certified at ``certify_alpha``),
    ``group`` images at a time.

    ``images(idx)`` gives (image (C, H, W) in [0,1], label); ``generator_for(idx)`` the
    image's generator (None: the default generator).  A runner that writes rows as it
    goes calls ``auditable_rows`` and ``audit_rows`` itself.
    """
    todo = auditable_rows(rows, smoothed.sigma)
    validate.whole(group, "group")
    records: list[AuditRecord] = []
    for start in range(0, len(todo), group):
        chunk = todo[start : start + group]
        loaded = [images(int(row.idx)) for row in chunk]
        wrong = [(int(r.idx), int(r.label), int(y)) for r, (_, y) in zip(chunk, loaded) if int(y) != int(r.label)]
        if wrong:
            idx, said, truth = wrong[0]
            raise InputError(f"row idx {idx} has label {said} but the dataset's image {idx} is class {truth}; "
                             "audit with the dataset and split the rows were certified on")
        xs = torch.stack([x for x, _ in loaded]).to(device)
        gens = [None if generator_for is None else generator_for(int(row.idx)) for row in chunk]
        records += audit_rows(smoothed, chunk, xs, settings, gens)
    return summarize_audit(records, certify_alpha, settings.alpha)
