"""The statistics every certificate rests on, in one place.

Pure functions of counts; no torch (arguments are checked by ``validate``, the only module of
ours imported).  Each bound or test exists here once and is used by the certifier, the
trainers' bookkeeping and the analysis alike.

- ``clopper_pearson_lower``: the one-sided (1 - alpha) Clopper-Pearson lower
  confidence bound on a binomial proportion (Cohen et al. 2019, CERTIFY).
- ``certified_radius``: the l2 radius ``sigma * Phi^-1(p_lower)`` that a lower
  bound ``p_lower > 1/2`` on the top-class probability certifies.
- ``binomial_test_pvalue``: the two-sided exact binomial test used by PREDICT.
  (``scipy.stats.binom_test`` was removed in SciPy 1.12; ``binomtest`` replaces it.)
- ``clopper_pearson_upper`` / ``clopper_pearson_interval``: the one-sided upper bound
  and the two-sided interval, both from the lower bound (by the symmetry k <-> n - k).
- ``p_lower_for_radius``: the lower bound a radius stands for, the inverse of
  ``certified_radius``.
- ``probability_lower_at_distance``: Cohen's bound moved by a perturbation,
  ``Phi(Phi^-1(p_lower) - ||delta|| / sigma)`` (Salman et al. 2019, Lemma 2:
  ``Phi^-1`` of the smoothed probability is ``1/sigma``-Lipschitz).
- ``separate_pb_bounds`` / ``certified_radius_separate``: the "separate p_B" certificate,
  ``sigma/2 (Phi^-1(p_lower) - Phi^-1(p_b_upper))`` with a Bonferroni upper bound valid for
  every class other than A at once (``clopper_pearson_upper`` per class).
- ``look_schedule`` / ``sequential_lower``: an anytime-valid lower confidence
  sequence (Clopper-Pearson at geometric looks with alpha spending), for
  certification that stops early; ``clopper_pearson_upper`` for futility rules.
- ``proportion_standard_error`` / ``paired_difference``: how much a table's accuracy (a mean
  over test images) would move with another draw of test images, alone and as a difference of
  two methods on the same images; for tables and comparisons, not for certificates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import beta, binomtest, norm

from diffsmooth import validate


def _check_alpha(alpha: float) -> None:
    validate.alpha(alpha)


def _check_counts(k: int, n: int) -> None:
    validate.whole(n, "n", minimum=1)
    validate.whole(k, "k", minimum=0, maximum=n)


def _check_sigma(sigma: float) -> None:
    validate.sigma(sigma, maximum=None)  # the formulas hold at any scale


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
    _check_sigma(sigma)
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


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) upper confidence bound on p from k successes in n trials.

    ``1 - clopper_pearson_lower(n - k, n, alpha)``: an upper bound on p is one minus a
    lower bound on the failure rate; equals ``Beta.ppf(1 - alpha, k + 1, n - k)``, and 1
    when ``k == n``.
    """
    _check_counts(k, n)
    return 1.0 - clopper_pearson_lower(n - k, n, alpha)


def clopper_pearson_interval(k: int, n: int, alpha: float) -> tuple[float, float]:
    """Two-sided (1 - alpha) Clopper-Pearson interval ``(lower, upper)`` on p: each side
    at level alpha / 2, so that p lies outside with probability at most alpha."""
    _check_counts(k, n)
    _check_alpha(alpha)
    return clopper_pearson_lower(k, n, alpha / 2), clopper_pearson_upper(k, n, alpha / 2)


def proportion_standard_error(successes: int, count: int) -> float:
    """Standard error ``sqrt(p (1 - p) / count)`` of the fraction ``p = successes / count`` of
    test images that pass (e.g. certified at a radius), over draws of ``count`` test images."""
    _check_counts(successes, count)
    p = successes / count
    return math.sqrt(p * (1 - p) / count)


def paired_difference(a: Sequence[bool], b: Sequence[bool]) -> tuple[float, float]:
    """Mean and standard error of ``a_i - b_i`` over the same images: ``(mean, s / sqrt(N))`` with
    ``s`` the sample standard deviation (N - 1) of the per-image differences in {-1, 0, 1}.

    The paired error is smaller than the two accuracies' errors combined when the methods tend to
    pass and fail on the same images. N >= 2; a, b: per-image pass/fail, in the same image order.
    """
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need the same images: {len(a)} vs {len(b)}")
    count = len(a)
    if count < 2:
        raise ValueError("a paired difference needs at least 2 images")
    diffs = [int(bool(x)) - int(bool(y)) for x, y in zip(a, b)]
    mean = sum(diffs) / count
    variance = sum((d - mean) ** 2 for d in diffs) / (count - 1)
    return mean, math.sqrt(variance / count)


def p_lower_for_radius(radius: float, sigma: float) -> float:
    """The lower bound ``Phi(radius / sigma)`` that certifies ``radius``: the inverse of
    ``certified_radius`` on radii > 0 (a radius of 0 gives 1/2, the abstain threshold)."""
    _check_sigma(sigma)
    validate.number(radius, "radius", minimum=0)
    return float(norm.cdf(radius / sigma))


def probability_lower_at_distance(p_lower: float, distance: float, sigma: float) -> float:
    """Lower bound on the smoothed probability of a class at any point within l2
    ``distance`` of a point where it is at least ``p_lower``.

    ``Phi(Phi^-1(p_lower) - distance / sigma)``: ``Phi^-1`` of the smoothed classifier's
    class probability is ``1/sigma``-Lipschitz (Salman et al. 2019, Lemma 2), which is
    also why Cohen's radius is ``sigma * Phi^-1(p_lower)`` (the bound reaches 1/2 there).
    """
    _check_sigma(sigma)
    if not 0.0 <= p_lower <= 1.0:
        raise ValueError(f"p_lower must lie in [0, 1], got {p_lower!r}")
    validate.number(distance, "distance", minimum=0)
    return float(norm.cdf(norm.ppf(p_lower) - distance / sigma))


# -- The separate p_B bound (Cohen et al., Theorem 1 in full; DensePure's certify_noapproximate) --

PB_ALPHA_SHARE = 0.1
"""The share of alpha spent on the upper bounds of the classes other than A (the rest, 0.9, on
p_A's lower bound).  Less than half because the p_A bound sets every radius while the p_B bound
matters only where the remaining mass is spread.  Checked on 200 Fashion-MNIST *training* images
(every 300th; shipped RS models, n = 100, alpha = 0.001), not on the test images any result is
reported on: ACR at sigma 0.25 / 0.5 was 0.2900 / 0.5062 with 0.1 against 0.2822 / 0.4927 with
half each (Cohen's p_A-only bound: 0.2910 / 0.5075; ``benchmarks/separate_pb.py``).  Any share fixed
before certifying is sound."""

def separate_pb_alphas(alpha: float, num_classes: int, pb_share: float = PB_ALPHA_SHARE) -> tuple[float, float]:
    """How the separate-p_B certificate splits ``alpha``: ``((1 - pb_share) alpha, pb_share alpha / (K - 1))``,
    the level of p_A's lower bound and of each other class's upper bound; refuses an ``alpha`` so small
    that a share underflows to 0 (no bound would hold at level 0)."""
    _check_alpha(alpha)
    if not 0.0 < pb_share < 1.0:
        raise ValueError(f"pb_share must lie strictly between 0 and 1, got {pb_share!r}")
    shares = ((1 - pb_share) * alpha, pb_share * alpha / (num_classes - 1))
    if not min(shares) > 0:
        raise validate.InputError(f"alpha {alpha!r} is too small for the separate p_B bound: its share for each of the "
                                  f"{num_classes - 1} other classes underflows to 0; use a larger alpha")
    return shares


def separate_pb_bounds(counts: Sequence[int], top: int, alpha: float,
                       pb_share: float = PB_ALPHA_SHARE) -> tuple[float, float]:
    """``(p_lower, p_b_upper)``: a lower bound on p_A and one upper bound valid for every other class.

    ``counts`` are the class counts of the n estimation samples (n = their sum) and ``top`` is
    the class A chosen on the separate selection draw.  The two bounds share ``alpha``, a fixed
    ``pb_share`` of it going to p_B:

    - ``p_lower``: Clopper-Pearson lower bound on p_A at level ``(1 - pb_share) alpha``;
    - ``p_b_upper``: Bonferroni (union) bound over the K - 1 other classes: each class's
      Clopper-Pearson upper bound at level ``pb_share alpha / (K - 1)``, the largest of them,
      capped at ``1 - p_lower`` (valid whenever the p_A bound holds, since p_B <= 1 - p_A).

    With probability at least 1 - alpha over the estimation draw, ``p_A >= p_lower`` and
    ``p_c <= p_b_upper`` for every class c other than A, simultaneously.
    """
    k = len(counts)
    if k < 2:
        raise ValueError(f"counts must hold at least 2 classes, got {k}")
    if int(top) != top or not 0 <= top < k:
        raise ValueError(f"top must be a class index in [0, {k}), got {top!r}")
    alpha_a, per_class = separate_pb_alphas(alpha, k, pb_share)
    n = int(sum(counts))
    p_lower = clopper_pearson_lower(int(counts[top]), n, alpha_a)
    p_b_upper = max(clopper_pearson_upper(int(c), n, per_class) for i, c in enumerate(counts) if i != top)
    return p_lower, min(p_b_upper, 1.0 - p_lower)


def certified_radius_separate(p_lower: float, p_b_upper: float, sigma: float) -> float:
    """l2 radius ``sigma / 2 * (Phi^-1(p_lower) - Phi^-1(p_b_upper))`` (Cohen et al., Theorem 1).

    ``p_lower`` bounds the top class's probability from below and ``p_b_upper`` every other
    class's from above; 0 when ``p_lower <= p_b_upper`` (abstain).  With ``p_b_upper =
    1 - p_lower`` it equals ``certified_radius(p_lower, sigma)``.
    """
    _check_sigma(sigma)
    for name, p in (("p_lower", p_lower), ("p_b_upper", p_b_upper)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {p!r}")
    if p_lower <= p_b_upper:
        return 0.0
    return float(sigma / 2 * (norm.ppf(p_lower) - norm.ppf(p_b_upper)))


# -- sequential certification: an anytime-valid lower confidence sequence -------------------


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


FIRST_LOOK = 64
"""Samples at the first look of a sequential certification (the default ``n_first``)."""


def look_schedule(n_max: int, alpha: float, n_first: int = FIRST_LOOK, ratio: float = 2.0) -> LookSchedule:
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
    validate.whole(n_max, "n_max")
    validate.whole(n_first, "n_first")
    validate.number(ratio, "ratio", above=1, hint=" (e.g. 2)")
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
