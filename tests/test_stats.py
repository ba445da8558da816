"""The statistics against statsmodels/scipy and closed forms."""

import math

import pytest
from scipy.stats import binomtest, norm
from statsmodels.stats.proportion import proportion_confint

from diffsmooth.stats import (
    binomial_test_pvalue,
    certified_radius,
    clopper_pearson_interval,
    clopper_pearson_lower,
    clopper_pearson_upper,
    p_lower_for_radius,
    probability_lower_at_distance,
)

GRID = [
    (k, n, alpha)
    for n in (1, 2, 7, 100, 1000, 100_000)
    for k in sorted({0, 1, n // 2, n - 1, n})
    for alpha in (0.001, 0.01, 0.05, 0.25)
    if 0 <= k <= n
]


@pytest.mark.parametrize("k,n,alpha", GRID)
def test_clopper_pearson_matches_statsmodels(k, n, alpha):
    expected = proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]
    assert clopper_pearson_lower(k, n, alpha) == pytest.approx(expected, abs=1e-12, rel=0)


@pytest.mark.parametrize("n", [1, 2, 10, 1000, 100_000])
@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_clopper_pearson_all_successes_closed_form(n, alpha):
    # P(all n succeed) = p^n = alpha at the bound.
    assert clopper_pearson_lower(n, n, alpha) == pytest.approx(alpha ** (1 / n), abs=1e-12)


def test_clopper_pearson_zero_successes_is_zero():
    assert clopper_pearson_lower(0, 50, 0.001) == 0.0


def test_clopper_pearson_is_a_lower_bound_and_tightens_with_n():
    bounds = [clopper_pearson_lower(9 * m, 10 * m, 0.001) for m in (1, 10, 100, 1000)]
    assert all(b < 0.9 for b in bounds)
    assert bounds == sorted(bounds)
    assert 0.9 - bounds[-1] < 0.01


@pytest.mark.parametrize("p_lower", [0.5, 0.6, 0.9, 0.999, 1 - 1e-9])
@pytest.mark.parametrize("sigma", [0.12, 0.25, 1.0])
def test_certified_radius_formula(p_lower, sigma):
    assert certified_radius(p_lower, sigma) == pytest.approx(sigma * norm.ppf(p_lower), abs=1e-12)


def test_certified_radius_zero_below_half_and_infinite_at_one():
    assert certified_radius(0.4999, 0.5) == 0.0
    assert certified_radius(0.0, 0.5) == 0.0
    assert certified_radius(0.5, 0.5) == 0.0
    assert math.isinf(certified_radius(1.0, 0.5))


@pytest.mark.parametrize("k,n", [(0, 1), (1, 1), (5, 10), (10, 10), (60, 100), (530, 1000), (990, 1000)])
def test_binomial_test_matches_scipy(k, n):
    assert binomial_test_pvalue(k, n) == pytest.approx(binomtest(k, n, 0.5).pvalue, abs=1e-12)


def test_binomial_test_closed_form():
    # Two-sided: P(X = 0) + P(X = 10) for X ~ Bin(10, 1/2).
    assert binomial_test_pvalue(10, 10) == pytest.approx(2 * 0.5**10, abs=1e-15)
    assert binomial_test_pvalue(5, 10) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "call,word",
    [
        (lambda: clopper_pearson_lower(1, 10, 0.0), "alpha"),
        (lambda: clopper_pearson_lower(1, 10, 1.0), "alpha"),
        (lambda: clopper_pearson_lower(11, 10, 0.01), "k"),
        (lambda: clopper_pearson_lower(0, 0, 0.01), "n"),
        (lambda: certified_radius(0.9, 0.0), "sigma"),
        (lambda: certified_radius(1.2, 0.5), "p_lower"),
        (lambda: binomial_test_pvalue(3, 2), "k"),
    ],
)
def test_bad_arguments_name_the_argument(call, word):
    with pytest.raises(ValueError, match=rf"^{word} "):
        call()


def test_stats_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, diffsmooth.stats; assert 'torch' not in sys.modules, 'stats imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("k,n,alpha", GRID)
def test_clopper_pearson_upper_and_interval_match_statsmodels(k, n, alpha):
    lower, upper = proportion_confint(k, n, alpha=2 * alpha, method="beta")
    assert clopper_pearson_upper(k, n, alpha) == pytest.approx(upper, abs=1e-12, rel=0)
    two_sided = proportion_confint(k, n, alpha=alpha, method="beta")
    assert clopper_pearson_interval(k, n, alpha) == pytest.approx(two_sided, abs=1e-12, rel=0)


@pytest.mark.parametrize("n", [1, 10, 1000])
def test_clopper_pearson_upper_closed_forms(n):
    # P(no success) = (1 - p)^n = alpha at the upper bound; all successes leave it at 1.
    assert clopper_pearson_upper(0, n, 0.01) == pytest.approx(1 - 0.01 ** (1 / n), abs=1e-12)
    assert clopper_pearson_upper(n, n, 0.01) == 1.0


@pytest.mark.parametrize("radius", [0.0, 0.1, 0.5, 0.9])
@pytest.mark.parametrize("sigma", [0.25, 1.0])
def test_p_lower_for_radius_inverts_certified_radius(radius, sigma):
    p_lower = p_lower_for_radius(radius, sigma)
    assert p_lower == pytest.approx(norm.cdf(radius / sigma), abs=1e-15)
    if radius > 0:
        assert certified_radius(p_lower, sigma) == pytest.approx(radius, rel=1e-9)


def test_probability_lower_at_distance_closed_forms():
    # No move keeps the bound; moving the full certified radius brings it to 1/2.
    assert probability_lower_at_distance(0.9, 0.0, 0.5) == pytest.approx(0.9, abs=1e-15)
    radius = certified_radius(0.9, 0.5)
    assert probability_lower_at_distance(0.9, radius, 0.5) == pytest.approx(0.5, abs=1e-12)
    assert probability_lower_at_distance(0.9, 0.3, 0.5) == pytest.approx(norm.cdf(norm.ppf(0.9) - 0.6), abs=1e-15)


@pytest.mark.parametrize(
    "call,word",
    [
        (lambda: clopper_pearson_upper(11, 10, 0.01), "k"),
        (lambda: clopper_pearson_interval(1, 10, 1.0), "alpha"),
        (lambda: p_lower_for_radius(-0.1, 0.5), "radius"),
        (lambda: p_lower_for_radius(0.1, 0.0), "sigma"),
        (lambda: probability_lower_at_distance(1.5, 0.1, 0.5), "p_lower"),
        (lambda: probability_lower_at_distance(0.9, float("nan"), 0.5), "distance"),
    ],
)
def test_new_bounds_name_the_bad_argument(call, word):
    with pytest.raises(ValueError, match=rf"^{word} "):
        call()
