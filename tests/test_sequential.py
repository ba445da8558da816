"""Sequential certification: the anytime-valid confidence sequence (stats) and
``certify_sequential`` (smoothing): coverage, soundness on a base with a known true
radius, stopping rules in closed form, packing, validation."""

import math

import numpy as np
import pytest
import torch
from closed_forms import HalfSpace
from scipy.stats import beta as scipy_beta
from scipy.stats import binom, norm
from statsmodels.stats.proportion import proportion_confint

from diffsmooth import Certificate, SequentialCertificate, SmoothedClassifier
from diffsmooth.sequential import SequentialOptions
from diffsmooth.stats import (
    LookSchedule,
    clopper_pearson_lower,
    clopper_pearson_upper,
    look_schedule,
    sequential_lower,
)
from diffsmooth.validate import InputError

# -- the confidence sequence (stats) ---------------------------------------------------------


def crossing_probability(schedule: LookSchedule, p: float) -> float:
    """Exact P(some look's Clopper-Pearson bound exceeds p) for Bin(., p) sample paths.

    Dynamic programming over the cumulative count: the mass of the paths that have not
    crossed yet is carried from look to look (convolved with the new samples' binomial),
    and the mass at counts whose bound exceeds p is removed as crossed."""
    crossed = 0.0
    mass = np.array([1.0])
    drawn = 0
    for size, level in zip(schedule.sizes, schedule.alphas):
        mass = np.convolve(mass, binom.pmf(np.arange(size - drawn + 1), size - drawn, p))
        drawn = size
        ks = np.arange(size + 1)
        bounds = np.where(ks > 0, scipy_beta.ppf(level, np.maximum(ks, 1), size - ks + 1), 0.0)
        over = bounds > p
        crossed += float(mass[over].sum())
        mass[over] = 0.0
    return crossed

P_GRID = [0.02, 0.1, 0.3, 0.5, 0.7, 0.841, 0.9, 0.95, 0.977, 0.99, 0.995, 0.999]


@pytest.mark.parametrize("alpha", [0.01, 0.05])
def test_confidence_sequence_coverage_is_exact_and_at_least_one_minus_alpha(alpha):
    schedule = look_schedule(2000, alpha, n_first=16, ratio=2.0)
    assert schedule.sizes == (16, 32, 64, 128, 256, 512, 1024, 2000)
    worst = max(crossing_probability(schedule, p) for p in P_GRID)
    assert worst <= alpha
    # The same looks each at the full alpha (no spending) do break the guarantee: the test can fail.
    naive = LookSchedule(schedule.sizes, (alpha,) * len(schedule.sizes))
    assert max(crossing_probability(naive, p) for p in P_GRID) > alpha


def test_confidence_sequence_coverage_by_simulation_at_random_stopping():
    """Paths stopped by a data-dependent rule (stop once the bound passes 0.8) keep coverage."""
    rng = np.random.default_rng(0)
    alpha, p, paths = 0.05, 0.8, 2500
    schedule = look_schedule(1000, alpha, n_first=10, ratio=2.0)
    draws = rng.random((paths, schedule.n_max)) < p
    cumulative = draws.cumsum(axis=1)
    wrong = 0
    for path in cumulative:
        ks = [int(path[n - 1]) for n in schedule.sizes]
        bounds = sequential_lower(ks, schedule)
        stop = next((j for j, b in enumerate(bounds) if b >= 0.8), len(bounds) - 1)
        wrong += bounds[stop] > p
    assert wrong / paths <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / paths)


def test_look_schedule_spends_alpha_and_ends_at_n_max():
    s = look_schedule(10_000, 0.001)
    assert s.sizes == (64, 128, 256, 512, 1024, 2048, 4096, 8192, 10_000)
    assert s.n_max == 10_000
    assert s.alpha == pytest.approx(0.001, rel=1e-12)
    # Spent in proportion to the look sizes (sum 26,320).
    assert s.alphas == pytest.approx(tuple(0.001 * n / 26_320 for n in s.sizes), rel=1e-12)
    assert look_schedule(50, 0.01).sizes == (50,) and look_schedule(50, 0.01).alphas == (0.01,)
    assert look_schedule(100, 0.01, n_first=10, ratio=1.5).sizes == (10, 15, 23, 34, 51, 76, 100)


def test_sequential_lower_is_the_running_maximum_of_the_looks():
    s = look_schedule(400, 0.01, n_first=100)
    ks = [100, 150, 300]
    per_look = [clopper_pearson_lower(k, n, a) for k, n, a in zip(ks, s.sizes, s.alphas)]
    assert sequential_lower(ks, s) == [per_look[0], max(per_look[:2]), max(per_look)]
    assert per_look[1] < per_look[0]  # a dip is not reported: the running maximum is


@pytest.mark.parametrize("k,n,alpha", [(0, 10, 0.05), (3, 10, 0.01), (10, 10, 0.01), (530, 1000, 0.001)])
def test_clopper_pearson_upper_mirrors_the_lower_bound(k, n, alpha):
    assert clopper_pearson_upper(k, n, alpha) == pytest.approx(1 - clopper_pearson_lower(n - k, n, alpha), abs=1e-12)
    expected = proportion_confint(k, n, alpha=2 * alpha, method="beta")[1]
    assert clopper_pearson_upper(k, n, alpha) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "call,word",
    [
        (lambda: look_schedule(0, 0.01), "n_max"),
        (lambda: look_schedule(100, 0.01, n_first=0), "n_first"),
        (lambda: look_schedule(100, 0.01, ratio=1.0), "ratio"),
        (lambda: look_schedule(100, 1.5), "alpha"),
        (lambda: sequential_lower([1, 2, 3], look_schedule(100, 0.01, n_first=50)), "successes"),
        (lambda: sequential_lower([40, 30], look_schedule(100, 0.01, n_first=50)), "successes"),
    ],
)
def test_sequential_bad_arguments_name_the_argument(call, word):
    with pytest.raises(ValueError, match=rf"^{word} "):
        call()


# -- certify_sequential (smoothing) --------------------------------------------------------------


W = [1.0, -0.5, 0.25, 2.0]
B = -1.2


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def always(label, num_classes=2):
    calls = []

    def base(x):
        calls.append(x.shape[0])
        return torch.full((x.shape[0],), label, dtype=torch.long)

    return base, calls


def overclaims(base, xs, certs):
    """Certificates that claim a wrong class or more radius than the true one."""
    wrong = []
    for x, cert in zip(xs, certs):
        d = float(base.signed_distance(x))
        if not cert.abstained and (cert.prediction != int(d > 0) or cert.radius > abs(d)):
            wrong.append((d, cert))
    return wrong


def binomial_bound(alpha, k):
    # Mean alpha plus 3 standard deviations of a Bin(k, alpha) fraction.
    return alpha + 3 * math.sqrt(alpha * (1 - alpha) / k)


SOUND = dict(n0=20, n_max=1000, alpha=0.01, batch_size=4096)
SOUND_FIRST = 16  # n_first of the soundness runs


def soundness_points(rng, k, near):
    """k signed distances: half spread over [-0.35, 0.35], half within 0.01 of the given radii
    (the boundary 0 included), where stopping early is most tempting."""
    spread = rng.uniform(-0.35, 0.35, k // 2)
    centres = rng.choice(near, k - k // 2)
    return np.concatenate([spread, centres + rng.uniform(-0.01, 0.01, k - k // 2)])


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [dict(tolerance=0.02), dict(max_radius=0.15, min_radius=0.05)],
    ids=["tolerance", "capped"],
)
def test_radius_mode_is_sound_over_many_certifications(options):
    base = HalfSpace(W, B)
    sigma, k = 0.1, 1000
    distances = soundness_points(np.random.default_rng(1), k, near=[0.0, 0.05, -0.05, 0.15])
    xs = base.at_distances(distances)
    smoothed = SmoothedClassifier(base, 2, sigma)
    certs = smoothed.certify_sequential_batch(xs, **SOUND, generators=[seeded(1000 + i) for i in range(k)],
                                              options=SequentialOptions(n_first=SOUND_FIRST, **options))
    assert len(overclaims(base, xs, certs)) / k <= binomial_bound(SOUND["alpha"], k)
    # The test says something: most points certify, many stop early, radii come close to the truth.
    certified = [c for c in certs if not c.abstained]
    assert len(certified) > k / 2
    assert sum(c.n < SOUND["n_max"] for c in certs) > k / 4
    assert {c.stop for c in certs} >= {"futile", "budget", "tolerance" if "tolerance" in options else "cap"}
    ratio = [c.radius / abs(float(base.signed_distance(x))) for x, c in zip(xs, certs) if not c.abstained]
    assert np.median(ratio) > 0.6


@pytest.mark.slow
def test_fixed_radius_mode_is_sound_over_many_certifications():
    base = HalfSpace(W, B)
    sigma, k, radii = 0.1, 1000, (0.05, 0.15)
    distances = soundness_points(np.random.default_rng(2), k, near=[0.05, 0.15, -0.05, -0.15, 0.0])
    xs = base.at_distances(distances)
    certs = SmoothedClassifier(base, 2, sigma).certify_sequential_batch(
        xs, **SOUND, generators=[seeded(5000 + i) for i in range(k)],
        options=SequentialOptions(radii=radii, n_first=SOUND_FIRST)
    )
    wrong = 0
    for d, cert in zip(distances, certs):
        claims = [r for r, certified in cert.radii if certified]
        assert [r for r, _ in cert.radii] == list(radii)
        assert claims == [r for r in radii if not cert.abstained and cert.radius >= r]
        wrong += bool(claims) and (cert.prediction != int(d > 0) or max(claims) > abs(d))
    assert wrong / k <= binomial_bound(SOUND["alpha"], k)
    decided = [c for c in certs if c.stop == "cap"]
    assert len(decided) > k / 4 and min(c.n for c in decided) <= SOUND["n_max"] // 4
    assert sum(c.stop == "futile" for c in certs) > k / 10


def test_constant_base_stops_at_the_closed_form_look():
    """A base that always says class 0: after n samples of look j the bound is alpha_j^(1/n_j)."""
    alpha, sigma, n_max = 0.001, 0.5, 10_000
    schedule = look_schedule(n_max, alpha)
    closed = [a ** (1 / n) for n, a in zip(schedule.sizes, schedule.alphas)]
    x = torch.full((1, 2, 2), 0.5)
    # Fixed radius 0.5 needs p_lower >= Phi(1).
    args = (x, 10, n_max, alpha, 1000, seeded(0))
    base, calls = always(0)
    cert = SmoothedClassifier(base, 2, sigma).certify_sequential(*args, options=SequentialOptions(radii=[0.5]))
    look = next(j for j, p in enumerate(closed) if sigma * norm.ppf(p) >= 0.5)
    assert (cert.looks, cert.n, cert.stop, cert.radii) == (look + 1, schedule.sizes[look], "cap", ((0.5, True),))
    assert cert.p_lower == pytest.approx(max(closed[: look + 1]), rel=1e-12)
    assert cert.radius == pytest.approx(sigma * norm.ppf(cert.p_lower), rel=1e-12)
    assert calls == [10] + np.diff((0,) + schedule.sizes).tolist()[: look + 1] and cert.counts == (cert.n, 0) and cert.selection_counts == (10, 0)
    # Radius mode, capped at 1.0: the first look whose radius reaches the cap.
    cert = SmoothedClassifier(always(0)[0], 2, sigma).certify_sequential(*args, options=SequentialOptions(max_radius=1.0))
    look = next(j for j, p in enumerate(closed) if sigma * norm.ppf(max(closed[: j + 1])) >= 1.0)
    assert (cert.n, cert.stop) == (schedule.sizes[look], "cap")
    # No cap, no tolerance: the whole budget, and the last look's bound.
    cert = SmoothedClassifier(always(0)[0], 2, sigma).certify_sequential(*args)
    assert (cert.n, cert.looks, cert.stop) == (n_max, len(schedule.sizes), "budget")
    assert cert.p_lower == pytest.approx(schedule.alphas[-1] ** (1 / n_max), rel=1e-12)
    # Tolerance 0.2: the first look whose radius is within 0.2 of what n_max would give.
    best = sigma * norm.ppf(closed[-1])
    look = next(j for j in range(len(closed)) if best - sigma * norm.ppf(max(closed[: j + 1])) < 0.2)
    cert = SmoothedClassifier(always(0)[0], 2, sigma).certify_sequential(*args, options=SequentialOptions(tolerance=0.2))
    assert (cert.n, cert.stop) == (schedule.sizes[look], "tolerance") and look < len(closed) - 1
    assert best - cert.radius < 0.2


def test_three_even_classes_abstain_early():
    # Scores are three pixels of equal value: each class wins with probability 1/3.
    even = lambda x: x.reshape(x.shape[0], -1)[:, :3]  # noqa: E731
    cert = SmoothedClassifier(even, 3, 0.25).certify_sequential(
        torch.full((1, 2, 2), 0.5), 100, 10_000, 0.001, 1000, seeded(3)
    )
    assert cert.abstained and cert.radius == 0.0 and cert.stop == "futile" and cert.n <= 256
    assert isinstance(cert, SequentialCertificate) and isinstance(cert, Certificate)


def test_noise_depends_only_on_the_image_generator():
    base = HalfSpace(W, B)
    smoothed = SmoothedClassifier(base, 2, sigma=0.1)
    xs = base.at_distances([0.02, 0.1, -0.2, 0.3, 0.001])
    options = SequentialOptions(radii=[0.05, 0.1], n_first=16)
    alone = [smoothed.certify_sequential(x, 10, 500, 0.01, 100, seeded(i), options) for i, x in enumerate(xs)]
    packed = smoothed.certify_sequential_batch(xs, 10, 500, 0.01, 100, [seeded(i) for i in range(5)], options)
    order = [4, 2, 0, 3, 1]
    shuffled = smoothed.certify_sequential_batch(xs[order], 10, 500, 0.01, 100, [seeded(i) for i in order], options)
    assert alone == packed == [shuffled[order.index(i)] for i in range(5)]
    assert len({c.n for c in alone}) > 1  # they stopped at different looks
    other = smoothed.certify_sequential(xs[0], 10, 500, 0.01, 100, seeded(99), options)
    assert other.selection_counts != alone[0].selection_counts or other.counts != alone[0].counts


def test_stopped_images_leave_the_shared_batches():
    sizes = []
    sigma = 0.05

    def base(x):
        sizes.append(x.shape[0])
        return (x[:, 0, 0, 0] > 0.5).long()

    # Image 0 is far from the boundary (settles at the first look); image 1 has p_A = 0.9.
    xs = torch.tensor([1.0, 0.5 + sigma * norm.ppf(0.9)]).reshape(2, 1, 1, 1)
    certs = SmoothedClassifier(base, 2, sigma).certify_sequential_batch(
        xs, 10, 1000, 0.01, 1000, [seeded(0), seeded(1)], SequentialOptions(radii=[0.05])
    )
    schedule = look_schedule(1000, 0.01)
    steps = np.diff((0,) + schedule.sizes).tolist()
    assert certs[0].looks == 1 and certs[1].looks > 1
    # Selection of both in one batch, the first look of both in one, then image 1 alone.
    assert sizes == [20, 2 * steps[0]] + steps[1 : certs[1].looks]


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(radii=[0.5], max_radius=1.0), "^radii .*excludes max_radius"),
        (dict(radii=[0.5], tolerance=0.1), "^radii .*excludes"),
        (dict(radii=[]), "^radii must be a non-empty list"),
        (dict(radii=[0.25, -0.5]), "^radii must be a finite radius >= 0"),
        (dict(radii=0.5), "^radii must be a non-empty list"),
        (dict(max_radius=float("inf")), "^max_radius must be a finite radius"),
        (dict(max_radius=0.5, min_radius=0.75), "^min_radius 0.75 exceeds max_radius 0.5"),
        (dict(tolerance=-0.1), "^tolerance must be"),
        (dict(ratio=1.0), "^ratio must be a finite number > 1"),
        (dict(n_first=0), "^n_first must be a whole number >= 1"),
    ],
)
def test_bad_options_raise_one_clear_line(options, message):
    smoothed = SmoothedClassifier(always(0)[0], 2, 0.5)
    with pytest.raises(InputError, match=message):
        smoothed.certify_sequential(torch.zeros(1, 2, 2), 10, 100, 0.01, 100, options=SequentialOptions(**options))


@pytest.mark.parametrize("change,word", [(dict(n_max=0), "n_max"), (dict(n0=0), "n0"), (dict(alpha=1.0), "alpha")])
def test_bad_numbers_name_the_argument(change, word):
    smoothed = SmoothedClassifier(always(0)[0], 2, 0.5)
    args = {**dict(n0=10, n_max=100, alpha=0.01, batch_size=10), **change}
    with pytest.raises(InputError, match=rf"^{word} "):
        smoothed.certify_sequential(torch.zeros(1, 2, 2), **args)


def test_a_grid_draw_asks_only_for_the_configurations_still_running():
    """estimate_in_looks asks each draw for the running configurations only (a grid then skips the
    work of stopped ones), grouping images by them; what each configuration counts is unchanged."""
    from diffsmooth.sequential import StopRule, estimate_in_looks
    from diffsmooth.smoothing import decide
    from diffsmooth.stats import look_schedule

    schedule = look_schedule(1000, 0.001, n_first=10, ratio=2.0)
    rule = StopRule(SequentialOptions(radii=(0.25,), n_first=10), lambda p: decide(p, 0.5))
    asked = []

    def draw(rows, count, configs):
        asked.append((tuple(rows), configs))
        fresh = torch.zeros(len(rows), 2, 3, dtype=torch.long)
        fresh[:, 0, 0] = count  # configuration 0: every sample on class 0, decides early
        fresh[:, 1, 0] = count * 4 // 5  # configuration 1: 80% on class 0, decides later
        fresh[:, 1, 1] = count - count * 4 // 5
        return fresh

    looked = estimate_in_looks(draw, [[0, 0], [0, 0]], 3, schedule, rule)
    configs = [c for _, c in asked]
    stop_look = configs.index((1,))  # both run until configuration 0 decides, then configuration 1 alone
    assert stop_look >= 1 and configs == [(0, 1)] * stop_look + [(1,)] * (len(configs) - stop_look)
    assert all(rows == (0, 1) for rows, _ in asked)
    assert [l.stop for l in looked[0]] == ["cap", "cap"]
    assert int(looked[0][0].counts.sum()) == schedule.sizes[stop_look - 1]  # it counted nothing after its stop
    assert int(looked[0][1].counts.sum()) == schedule.sizes[len(asked) - 1] > schedule.sizes[stop_look - 1]
