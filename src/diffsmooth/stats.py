"""The statistics every certificate rests on, in one place.

Pure functions of counts; no torch.  Each bound or test exists here once and
is used by the certifier, the trainers' bookkeeping and the analysis alike.

- ``clopper_pearson_lower``: the one-sided (1 - alpha) Clopper-Pearson lower
  confidence bound on a binomial proportion (Cohen et al. 2019, CERTIFY).
- ``certified_radius``: the l2 radius ``sigma * Phi^-1(p_lower)`` that a lower
  bound ``p_lower > 1/2`` on the top-class probability certifies.
- ``binomial_test_pvalue``: the two-sided exact binomial test used by PREDICT.
  (``scipy.stats.binom_test`` was removed in SciPy 1.12; ``binomtest`` replaces it.)
- ``look_schedule`` / ``sequential_lower``: an anytime-valid lower confidence
  sequence (Clopper-Pearson at geometric looks with alpha spending), for
  certification that stops early; ``clopper_pearson_upper`` for futility rules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import beta, binomtest, norm


def _check_alpha(alpha: float) -> None:
    if not (isinstance(alpha, (int, float)) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")


def _check_counts(k: int, n: int) -> None:
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive whole number of samples, got {n!r}")
    if int(k) != k or not 0 <= k <= n:
        raise ValueError(f"k must be a whole number in [0, n={n}], got {k!r}")


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) lower confidence bound on p from k successes in n trials.

    Equals ``Beta.ppf(alpha, k, n - k + 1)``, and 0 when ``k == 0``; the same
    number as statsmodels' two-sided ``proportion_confint(k, n, 2 * alpha,
    method="beta")[0]``.  With probability at least 1 - alpha over the n draws,
    the true p is at least this value.
    """
    _check_counts(k, n)
    _check_alpha(alpha)
    if k == 0:
        return 0.0
    return float(beta.ppf(alpha, k, n - k + 1))


def certified_radius(p_lower: float, sigma: float) -> float:
    """l2 radius certified by a lower bound ``p_lower`` on the top-class probability.

    ``sigma * Phi^-1(p_lower)`` for ``p_lower >= 1/2`` (Cohen et al., Theorem 1),
    0 below, where the smoothed classifier abstains.  ``sigma`` is the noise
    standard deviation in the space the radius is measured in ([0,1] pixels).
    """
    if not (isinstance(sigma, (int, float)) and sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
    if not 0.0 <= p_lower <= 1.0:
        raise ValueError(f"p_lower must lie in [0, 1], got {p_lower!r}")
    if p_lower < 0.5:
        return 0.0
    return float(sigma * norm.ppf(p_lower))


def binomial_test_pvalue(k: int, n: int, p: float = 0.5) -> float:
    """Two-sided exact binomial test p-value of k successes in n trials under rate p."""
    _check_counts(k, n)
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie strictly between 0 and 1, got {p!r}")
    return float(binomtest(int(k), int(n), p, alternative="two-sided").pvalue)


# -- sequential certification: an anytime-valid lower confidence sequence -------------------


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) upper confidence bound on p from k successes in n trials.

    Equals ``Beta.ppf(1 - alpha, k + 1, n - k)``, and 1 when ``k == n``: the mirror
    image of ``clopper_pearson_lower`` (``1 - clopper_pearson_lower(n - k, n, alpha)``).
    """
    _check_counts(k, n)
    _check_alpha(alpha)
    if k == n:
        return 1.0
    return float(beta.ppf(1.0 - alpha, k + 1, n - k))


@dataclass(frozen=True)
class LookSchedule:
    """When a sequential test looks at its counts, and the alpha each look spends.

    ``sizes`` are the cumulative sample sizes ``n_1 < ... < n_K`` (``n_K`` the
    budget); ``alphas`` the level of the Clopper-Pearson bound at each look,
    summing to the total ``alpha``.  Build one with ``look_schedule``.
    """

    sizes: tuple[int, ...]
    alphas: tuple[float, ...]

    @property
    def alpha(self) -> float:
        return math.fsum(self.alphas)

    @property
    def n_max(self) -> int:
        return self.sizes[-1]

    def lower(self, look: int, k: int) -> float:
        """The Clopper-Pearson lower bound of look ``look`` (0-based) from ``k`` successes in
        ``sizes[look]`` trials, at that look's level ``alphas[look]``."""
        return clopper_pearson_lower(k, self.sizes[look], self.alphas[look])


def look_schedule(n_max: int, alpha: float, n_first: int = 64, ratio: float = 2.0) -> LookSchedule:
    """A geometric schedule of looks with its alpha spending.

    Looks at ``n_k = ceil(n_first * ratio^k)`` samples while below ``n_max``, and
    at ``n_max`` last.  Look k spends ``alpha * n_k / sum_j n_j``: in proportion
    to its sample size, so the early looks, which only need to settle clear
    cases (where the bound's cost of a smaller alpha is a few samples), spend
    little, and the last ones, where the radius of a run that uses its budget is
    read, keep most of alpha (about 0.38 alpha at the last look and 0.31 at the
    one before for n_max = 10,000 and the defaults).  Any split with
    ``sum(alphas) = alpha`` is valid (a union bound).
    """
    if int(n_max) != n_max or n_max < 1:
        raise ValueError(f"n_max must be a positive whole number of samples, got {n_max!r}")
    if int(n_first) != n_first or n_first < 1:
        raise ValueError(f"n_first must be a positive whole number of samples, got {n_first!r}")
    if not (isinstance(ratio, (int, float)) and ratio > 1 and math.isfinite(ratio)):
        raise ValueError(f"ratio must be a finite number > 1 (e.g. 2), got {ratio!r}")
    _check_alpha(alpha)
    sizes: list[int] = []
    size = float(n_first)
    while math.ceil(size) < n_max:
        if not sizes or math.ceil(size) > sizes[-1]:
            sizes.append(math.ceil(size))
        size *= ratio
    sizes.append(int(n_max))
    total = sum(sizes)
    return LookSchedule(tuple(sizes), tuple(alpha * size / total for size in sizes))


def sequential_lower(successes: Sequence[int], schedule: LookSchedule) -> list[float]:
    """The anytime-valid (1 - alpha) lower confidence sequence at each look taken so far.

    ``successes[j]`` is the cumulative count after ``schedule.sizes[j]`` trials
    (fewer entries than looks when the test stopped early).  Entry j is the
    running maximum of the looks' Clopper-Pearson bounds at levels ``alpha_j``.

    Guarantee: by the union bound, with probability at least
    ``1 - sum(alpha_j) = 1 - alpha`` every look's bound lies below p at once, so
    the running maximum does too: the bound read at *any* stopping time (data
    dependent, decided from the counts) is a valid (1 - alpha) lower bound, and
    so are all decisions taken from one sequence together (several radii need
    no further split of alpha).  This is the staged Clopper-Pearson design of
    Horvath et al., "Boosting randomized smoothing with variance reduced
    classifiers" (ICLR 2022), with Bonferroni alpha spending over a geometric
    schedule of looks in place of their equal split.
    """
    if len(successes) > len(schedule.sizes):
        raise ValueError(f"successes has {len(successes)} looks but the schedule only {len(schedule.sizes)}")
    bounds: list[float] = []
    best = 0.0
    previous_k, previous_n = 0, 0
    for look, k in enumerate(successes):
        n = schedule.sizes[look]
        if not previous_k <= k <= previous_k + (n - previous_n):
            raise ValueError(f"successes must be cumulative counts: look {look} has {k!r} after {previous_k}")
        best = max(best, schedule.lower(look, k))
        bounds.append(best)
        previous_k, previous_n = k, n
    return bounds
