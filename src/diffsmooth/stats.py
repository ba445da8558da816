"""The statistics every certificate rests on, in one place.

Pure functions of counts; no torch.  Each bound or test exists here once and
is used by the certifier, the trainers' bookkeeping and the analysis alike.

- ``clopper_pearson_lower``: the one-sided (1 - alpha) Clopper-Pearson lower
  confidence bound on a binomial proportion (Cohen et al. 2019, CERTIFY).
- ``certified_radius``: the l2 radius ``sigma * Phi^-1(p_lower)`` that a lower
  bound ``p_lower > 1/2`` on the top-class probability certifies.
- ``binomial_test_pvalue``: the two-sided exact binomial test used by PREDICT.
  (``scipy.stats.binom_test`` was removed in SciPy 1.12; ``binomtest`` replaces it.)
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
