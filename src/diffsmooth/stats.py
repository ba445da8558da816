"""The statistics every certificate rests on, in one place.

Pure functions of counts; no torch.  Each bound or test exists here once and
is used by the certifier, the trainers' bookkeeping and the analysis alike.

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
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy.stats import beta, binomtest, norm


def _check_alpha(alpha: float) -> None:
    if not (isinstance(alpha, (int, float)) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")


def _check_counts(k: int, n: int) -> None:
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive whole number of samples, got {n!r}")
    if int(k) != k or not 0 <= k <= n:
        raise ValueError(f"k must be a whole number in [0, n={n}], got {k!r}")


def _check_sigma(sigma: float) -> None:
    if not (isinstance(sigma, (int, float)) and sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")


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


def p_lower_for_radius(radius: float, sigma: float) -> float:
    """The lower bound ``Phi(radius / sigma)`` that certifies ``radius``: the inverse of
    ``certified_radius`` on radii > 0 (a radius of 0 gives 1/2, the abstain threshold)."""
    _check_sigma(sigma)
    if not (radius >= 0 and math.isfinite(radius)):
        raise ValueError(f"radius must be a finite number >= 0, got {radius!r}")
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
    if not (distance >= 0 and math.isfinite(distance)):
        raise ValueError(f"distance must be a finite number >= 0, got {distance!r}")
    return float(norm.cdf(norm.ppf(p_lower) - distance / sigma))


# -- The separate p_B bound (Cohen et al., Theorem 1 in full; DensePure's certify_noapproximate) --

PB_ALPHA_SHARE = 0.1
"""The share of alpha spent on the upper bounds of the classes other than A (the rest, 0.9, on
p_A's lower bound).  Less than half because the p_A bound sets every radius while the p_B bound
matters only where the remaining mass is spread: with half of alpha each, the shipped
Fashion-MNIST models lost about 3% of ACR at n = 100 against the p_A-only bound, with 0.1
about 0.5% (most of their certified images put all samples, or all but a few, on A)."""

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
    _check_alpha(alpha)
    if not 0.0 < pb_share < 1.0:
        raise ValueError(f"pb_share must lie strictly between 0 and 1, got {pb_share!r}")
    k = len(counts)
    if k < 2:
        raise ValueError(f"counts must hold at least 2 classes, got {k}")
    if int(top) != top or not 0 <= top < k:
        raise ValueError(f"top must be a class index in [0, {k}), got {top!r}")
    n = int(sum(counts))
    p_lower = clopper_pearson_lower(int(counts[top]), n, (1 - pb_share) * alpha)
    per_class = pb_share * alpha / (k - 1)
    p_b_upper = max(clopper_pearson_upper(int(c), n, per_class) for i, c in enumerate(counts) if i != top)
    return p_lower, min(p_b_upper, 1.0 - p_lower)


def certified_radius_separate(p_lower: float, p_b_upper: float, sigma: float) -> float:
    """l2 radius ``sigma / 2 * (Phi^-1(p_lower) - Phi^-1(p_b_upper))`` (Cohen et al., Theorem 1).

    ``p_lower`` bounds the top class's probability from below and ``p_b_upper`` every other
    class's from above; 0 when ``p_lower <= p_b_upper`` (abstain).  With ``p_b_upper =
    1 - p_lower`` it equals ``certified_radius(p_lower, sigma)``.
    """
    if not (isinstance(sigma, (int, float)) and sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
    for name, p in (("p_lower", p_lower), ("p_b_upper", p_b_upper)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {p!r}")
    if p_lower <= p_b_upper:
        return 0.0
    return float(sigma / 2 * (norm.ppf(p_lower) - norm.ppf(p_b_upper)))
