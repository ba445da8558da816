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
"""

from __future__ import annotations

import math

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
