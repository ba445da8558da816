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


# -- the separate p_B bound -------------------------------------------------------------

from scipy.stats import beta  # noqa: E402

from diffsmooth.stats import (  # noqa: E402
    certified_radius_separate,
    clopper_pearson_upper,
    separate_pb_bounds,
)


@pytest.mark.parametrize("k,n,alpha", [g for g in GRID if g[1] > 1])
def test_clopper_pearson_upper_matches_statsmodels(k, n, alpha):
    expected = proportion_confint(k, n, alpha=2 * alpha, method="beta")[1]
    assert clopper_pearson_upper(k, n, alpha) == pytest.approx(expected, abs=1e-12, rel=0)


def test_separate_pb_by_hand():
    # alpha = 0.01 shared: p_A at 0.009, each of the K - 1 = 2 others at 0.001 / 2 = 0.0005.
    counts, alpha, sigma = (80, 12, 8), 0.01, 0.5
    p_lower, p_b_upper = separate_pb_bounds(counts, 0, alpha)
    assert p_lower == pytest.approx(beta.ppf(0.009, 80, 21), abs=1e-12)
    assert p_b_upper == pytest.approx(beta.ppf(1 - 0.0005, 13, 88), abs=1e-12)  # the larger count, 12
    radius = certified_radius_separate(p_lower, p_b_upper, sigma)
    assert radius == pytest.approx(0.25 * (norm.ppf(p_lower) - norm.ppf(p_b_upper)), abs=1e-12)
    # Half of alpha each: p_A at 0.005, the others at 0.0025.
    p_lower, p_b_upper = separate_pb_bounds(counts, 0, alpha, pb_share=0.5)
    assert p_lower == pytest.approx(beta.ppf(0.005, 80, 21), abs=1e-12)
    assert p_b_upper == pytest.approx(beta.ppf(1 - 0.0025, 13, 88), abs=1e-12)


def test_separate_pb_closed_form_when_all_samples_agree():
    # P(all n on A) = p^n and P(none of n on c) = (1 - p)^n give the bounds in closed form.
    n, k, alpha = 1000, 10, 0.001
    p_lower, p_b_upper = separate_pb_bounds([0] * 3 + [n] + [0] * 6, 3, alpha, pb_share=0.5)
    assert p_lower == pytest.approx((alpha / 2) ** (1 / n), abs=1e-12)
    per_class = 1 - (alpha / (2 * (k - 1))) ** (1 / n)
    assert clopper_pearson_upper(0, n, alpha / (2 * (k - 1))) == pytest.approx(per_class, abs=1e-12)
    # Here 1 - p_lower (0.0076) is below the per-class bound (0.0098): the cap decides.
    assert p_b_upper == pytest.approx(min(per_class, 1 - p_lower), abs=1e-12) == 1 - p_lower


def test_separate_pb_wins_when_the_rest_is_spread_and_never_falls_below_p_a_alone():
    sigma, alpha = 0.25, 0.001
    spread = [700] + [33] * 9 + [3]
    p_lower, p_b_upper = separate_pb_bounds(spread, 0, alpha)
    separate = certified_radius_separate(p_lower, p_b_upper, sigma)
    cohen = certified_radius(clopper_pearson_lower(700, 1000, alpha), sigma)
    assert separate > 1.5 * cohen > 0
    # Two classes share everything: the cap p_b_upper <= 1 - p_lower keeps the p_A-only radius.
    for counts in ([550, 450], [520, 480, 0], [990, 10, 0, 0], [600, 400, 0, 0, 0]):
        p_lower, p_b_upper = separate_pb_bounds(counts, 0, alpha)
        assert p_b_upper <= 1 - p_lower
        assert certified_radius_separate(p_lower, p_b_upper, sigma) >= certified_radius(p_lower, sigma) - 1e-12


def test_separate_pb_radius_reduces_to_cohen_and_abstains():
    assert certified_radius_separate(0.9, 0.1, 0.5) == pytest.approx(certified_radius(0.9, 0.5), abs=1e-12)
    assert certified_radius_separate(0.3, 0.3, 0.5) == 0.0
    assert certified_radius_separate(0.2, 0.4, 0.5) == 0.0
    # Certifiable below 1/2: p_A >= 0.4 beats every other class at <= 0.2.
    assert certified_radius_separate(0.4, 0.2, 0.5) == pytest.approx(0.25 * (norm.ppf(0.4) - norm.ppf(0.2)))


@pytest.mark.parametrize(
    "call,word",
    [
        (lambda: separate_pb_bounds([5], 0, 0.01), "counts"),
        (lambda: separate_pb_bounds([5, 5], 2, 0.01), "top"),
        (lambda: separate_pb_bounds([5, 5], 0, 0.0), "alpha"),
        (lambda: separate_pb_bounds([5, 5], 0, 0.01, pb_share=1.0), "pb_share"),
        (lambda: certified_radius_separate(0.9, 1.5, 0.5), "p_b_upper"),
        (lambda: certified_radius_separate(0.9, 0.1, 0.0), "sigma"),
    ],
)
def test_separate_pb_bad_arguments(call, word):
    with pytest.raises(ValueError, match=rf"^{word} "):
        call()


def test_proportion_standard_error_closed_forms():
    from diffsmooth.stats import proportion_standard_error

    assert proportion_standard_error(50, 100) == pytest.approx(0.05)  # sqrt(0.25 / 100)
    assert proportion_standard_error(0, 10) == 0.0 and proportion_standard_error(10, 10) == 0.0
    assert proportion_standard_error(1, 4) == pytest.approx(math.sqrt(0.25 * 0.75 / 4))
    with pytest.raises(ValueError, match="whole number >= 1"):
        proportion_standard_error(0, 0)


def test_paired_difference_by_hand_and_against_numpy():
    import numpy as np

    from diffsmooth.stats import paired_difference

    # differences 1, 0, 0, -1, 1: mean 0.2, sample variance (0.64 + 0.04*2 + 1.44 + 0.64) / 4 = 0.7
    a, b = [1, 1, 0, 0, 1], [0, 1, 0, 1, 0]
    mean, se = paired_difference(a, b)
    assert mean == pytest.approx(0.2) and se == pytest.approx(math.sqrt(0.7 / 5))
    rng = np.random.default_rng(0)
    a, b = rng.random(300) < 0.6, rng.random(300) < 0.5
    d = a.astype(int) - b.astype(int)
    assert paired_difference(list(a), list(b)) == pytest.approx((d.mean(), d.std(ddof=1) / math.sqrt(300)))
    assert paired_difference([1, 1, 0], [1, 1, 0]) == (0.0, 0.0)
    with pytest.raises(ValueError, match="same images"):
        paired_difference([1, 0], [1])
    with pytest.raises(ValueError, match="at least 2"):
        paired_difference([1], [0])
