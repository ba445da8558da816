"""CERTIFY and PREDICT: soundness on a base with a known true radius, tightness, validation."""

import math

import pytest
import torch
from closed_forms import HalfSpace
from scipy.stats import norm

from diffsmooth import Certificate, SmoothedClassifier
from diffsmooth.validate import InputError

W = [1.0, -0.5, 0.25, 2.0]
B = -1.2


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def test_certified_radius_is_sound_over_many_certifications():
    """At alpha = 0.01, at most alpha of certificates may be wrong or overclaim."""
    torch.manual_seed(0)  # only for choosing the test points
    base = HalfSpace(W, B)
    smoothed = SmoothedClassifier(base, num_classes=2, sigma=0.25)
    k = 400
    xs = torch.rand(k, 1, 2, 2, generator=seeded(1))
    alpha = 0.01
    certs = smoothed.certify_batch(xs, n0=50, n=300, alpha=alpha, batch_size=2048, generators=[seeded(100 + i) for i in range(k)])
    wrong = 0
    certified = 0
    for x, cert in zip(xs, certs):
        d = float(base.signed_distance(x))
        truth = int(d > 0)
        if cert.abstained:
            continue
        certified += 1
        wrong += cert.prediction != truth or cert.radius > abs(d)
    # Binomial bound: mean alpha plus 3 standard deviations of a Bin(k, alpha) fraction.
    bound = alpha + 3 * math.sqrt(alpha * (1 - alpha) / k)
    assert certified > k / 2, "test points too close to the boundary to say anything"
    assert wrong / k <= bound


def test_certified_radius_is_tight_at_large_n():
    base = HalfSpace(W, B)
    sigma = 0.5
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.5]]])
    true_radius = float(base.signed_distance(x))
    assert true_radius > 0.3  # not too close to the boundary
    cert = SmoothedClassifier(base, 2, sigma).certify(x, n0=100, n=100_000, alpha=0.001, batch_size=20_000, generator=seeded(7))
    assert cert.prediction == 1
    assert 0.9 * true_radius <= cert.radius <= true_radius
    # The bound and the radius follow the stats module exactly.
    assert cert.n_a == cert.counts[1] and sum(cert.counts) == 100_000 and sum(cert.selection_counts) == 100
    assert cert.radius == pytest.approx(sigma * norm.ppf(cert.p_lower))


def test_identical_seeds_give_identical_certificates_and_packing_does_not_matter():
    base = HalfSpace(W, B)
    smoothed = SmoothedClassifier(base, 2, sigma=0.5)
    xs = torch.rand(5, 1, 2, 2, generator=seeded(3))
    alone = [smoothed.certify(x, 10, 37, 0.01, batch_size=100, generator=seeded(i)) for i, x in enumerate(xs)]
    again = [smoothed.certify(x, 10, 37, 0.01, batch_size=100, generator=seeded(i)) for i, x in enumerate(xs)]
    packed = smoothed.certify_batch(xs, 10, 37, 0.01, batch_size=100, generators=[seeded(i) for i in range(5)])
    assert alone == again == packed
    other = smoothed.certify(xs[0], 10, 37, 0.01, batch_size=100, generator=seeded(99))
    assert other.counts != alone[0].counts


def test_selection_and_estimation_draws_are_separate():
    calls = []

    def base(x):
        calls.append(x.shape[0])
        return torch.zeros(x.shape[0], dtype=torch.long)

    cert = SmoothedClassifier(base, 3, 0.25).certify(torch.full((1, 2, 2), 0.5), n0=30, n=70, alpha=0.01, batch_size=1000)
    assert calls == [30, 70]
    assert cert.selection_counts == (30, 0, 0) and cert.counts == (70, 0, 0)
    assert cert.p_lower == pytest.approx(0.01 ** (1 / 70))


def test_batch_size_splits_calls():
    sizes = []

    def base(x):
        sizes.append(x.shape[0])
        return torch.zeros(x.shape[0], 2)

    SmoothedClassifier(base, 2, 0.25).certify_batch(torch.full((3, 1, 2, 2), 0.5), n0=4, n=25, alpha=0.01, batch_size=10)
    # Selection: 3 chunks of 4 packed (8, then 4); estimation: 10,10,5 per image, the 5s packed.
    assert sizes == [8, 4] + [10] * 6 + [10, 5]


def test_scores_and_labels_are_both_accepted():
    def scores(x):
        return torch.stack([x.mean(dim=(1, 2, 3)), 0.5 * torch.ones(x.shape[0])], dim=1)

    cert = SmoothedClassifier(scores, 2, 0.1).certify(torch.ones(1, 3, 3), 20, 200, 0.001, 64, seeded(0))
    assert cert.prediction == 0 and cert.radius > 0


def test_predict_abstains_on_a_coin_flip_and_answers_a_clear_majority():
    sigma = 0.25
    coin = lambda x: (x[:, 0, 0, 0] > 0.5).long()  # noqa: E731  P = 1/2 at x = 0.5
    threshold = 0.5 + sigma * norm.ppf(0.9)
    biased = lambda x: (x[:, 0, 0, 0] > threshold).long()  # noqa: E731  class 0 with P = 0.9
    x = torch.full((1, 2, 2), 0.5)
    abstain = SmoothedClassifier(coin, 2, sigma).predict(x, n=1000, alpha=0.001, batch_size=500, generator=seeded(0))
    assert abstain.abstained and abstain.prediction is None and abstain.p_value > 0.001
    answer = SmoothedClassifier(biased, 2, sigma).predict(x, n=1000, alpha=0.001, batch_size=500, generator=seeded(0))
    assert answer.prediction == 0 and not answer.abstained
    assert 850 < answer.counts[0] < 950


GOOD = dict(n0=10, n=10, alpha=0.01, batch_size=10)


@pytest.mark.parametrize(
    "change,word",
    [
        (dict(alpha=0.0), "alpha"),
        (dict(alpha=1.0), "alpha"),
        (dict(alpha=-0.1), "alpha"),
        (dict(n0=0), "n0"),
        (dict(n=0), "n"),
        (dict(n=2.5), "n"),
        (dict(batch_size=0), "batch_size"),
    ],
)
def test_bad_numbers_raise_naming_the_argument(change, word):
    smoothed = SmoothedClassifier(lambda x: torch.zeros(x.shape[0], 2), 2, 0.5)
    with pytest.raises(ValueError, match=rf"^{word} "):
        smoothed.certify(torch.zeros(1, 2, 2), **{**GOOD, **change})


@pytest.mark.parametrize("sigma", [0.0, -0.25, float("nan"), float("inf")])
def test_bad_sigma(sigma):
    with pytest.raises(ValueError, match="^sigma "):
        SmoothedClassifier(lambda x: x, 2, sigma)


@pytest.mark.parametrize(
    "x,word",
    [
        (torch.full((1, 2, 2), float("nan")), "NaN"),
        (torch.full((1, 2, 2), float("inf")), "NaN or infinite"),
        (torch.zeros(2, 2), r"shape \(C, H, W\)"),
        (torch.zeros(1, 1, 2, 2), r"shape \(C, H, W\)"),
        (torch.full((1, 2, 2), 255.0), r"\[0,1\]"),
    ],
)
def test_bad_images(x, word):
    smoothed = SmoothedClassifier(lambda x: torch.zeros(x.shape[0], 2), 2, 0.5)
    with pytest.raises(InputError, match=word):
        smoothed.certify(x, **GOOD)


@pytest.mark.parametrize("out", [torch.zeros(10, 3), torch.zeros(10, 2, 1), torch.zeros(9), torch.zeros(10)])
def test_base_with_wrong_output_shape(out):
    smoothed = SmoothedClassifier(lambda x: out, 2, 0.5)
    with pytest.raises(InputError, match="^base returned shape"):
        smoothed.certify(torch.zeros(1, 2, 2), **GOOD)


def test_certificate_is_a_typed_result():
    cert = SmoothedClassifier(lambda x: torch.ones(x.shape[0], dtype=torch.long), 2, 0.5).certify(torch.zeros(1, 2, 2), **GOOD)
    assert isinstance(cert, Certificate)
    assert cert.prediction == 1 and cert.n == 10 and cert.n_a == 10 and cert.sigma == 0.5


# -- the separate p_B bound -------------------------------------------------------------

import numpy as np  # noqa: E402
from scipy.optimize import brentq  # noqa: E402


class ThreeBands(torch.nn.Module):
    """h(x) = 0, 1 or 2 as u = w.x + b (||w|| = 1) lies below T1, between T1 and T2, or above T2.

    Under N(0, sigma^2 I) noise u moves by sigma z, so the class probabilities are closed
    forms in u: p0 = Phi((T1 - u)/sigma), p2 = 1 - Phi((T2 - u)/sigma), p1 = the rest, and the
    true radius of g at x is the distance in u to the nearest point where their argmax changes.
    The middle class's missing mass is split over two classes: the case the separate p_B bound is for.
    """

    T1, T2 = -0.3, 0.3

    def __init__(self):
        super().__init__()
        self.w = torch.full((4,), 0.5, dtype=torch.float64)
        self.b = -1.0

    def u(self, x):
        return x.reshape(x.shape[0], -1).double() @ self.w + self.b

    def forward(self, x):
        u = self.u(x)
        return (u >= self.T1).long() + (u >= self.T2).long()

    def probabilities(self, u, sigma):
        p0 = norm.cdf((self.T1 - u) / sigma)
        p2 = 1 - norm.cdf((self.T2 - u) / sigma)
        return p0, 1 - p0 - p2, p2

    def true_certificates(self, us, sigma):
        """(class of g, true l2 radius) at each u; boundaries where p1 meets p0 and p2."""
        lo = brentq(lambda u: self.probabilities(u, sigma)[0] - self.probabilities(u, sigma)[1], -3, 0)
        hi = brentq(lambda u: self.probabilities(u, sigma)[2] - self.probabilities(u, sigma)[1], 0, 3)
        grid = torch.linspace(-3, 3, 6001, dtype=torch.float64).numpy()
        labels = torch.from_numpy(np.stack(self.probabilities(grid, sigma))).argmax(0)
        assert labels.diff().count_nonzero() == 2  # the argmax changes exactly at lo and hi
        out = []
        for u in us:
            cls = 0 if u < lo else (1 if u < hi else 2)
            out.append((cls, min(abs(u - lo), abs(u - hi))))
        return out


def test_separate_pb_is_sound_on_three_bands():
    """alpha = 0.01 over 1200 certifications: wrong or overclaiming certificates stay within
    the binomial bound, and the bound gives larger radii than Cohen's on the middle class."""
    base, sigma, alpha, k = ThreeBands(), 0.25, 0.01, 1200
    xs = torch.rand(k, 1, 2, 2, generator=seeded(11))
    truth = base.true_certificates(base.u(xs).tolist(), sigma)
    gens = lambda: [seeded(5000 + i) for i in range(k)]  # noqa: E731
    separate = SmoothedClassifier(base, 3, sigma, bound="separate-pb").certify_batch(
        xs, n0=50, n=400, alpha=alpha, batch_size=8192, generators=gens())
    cohen = SmoothedClassifier(base, 3, sigma).certify_batch(
        xs, n0=50, n=400, alpha=alpha, batch_size=8192, generators=gens())
    wrong = sum(not c.abstained and (c.prediction != cls or c.radius > r) for c, (cls, r) in zip(separate, truth))
    assert wrong / k <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / k)
    assert sum(not c.abstained for c in separate) > k / 2
    assert all(c.bound == "separate-pb" and c.p_b_upper is not None for c in separate)
    # Same noise, same counts: only the bound differs.
    assert [c.counts for c in separate] == [c.counts for c in cohen]
    middle = [i for i, (cls, _) in enumerate(truth) if cls == 1]
    assert len(middle) > k / 3
    acr = lambda certs: sum(certs[i].radius for i in middle) / len(middle)  # noqa: E731
    assert acr(separate) > 1.1 * acr(cohen)


def test_separate_pb_certificate_by_hand():
    # A base whose label depends on the first pixel only: counts are exact functions of the noise.
    def base(x):
        v = x[:, 0, 0, 0]
        return (v > 0.6).long() + 2 * (v < 0.1).long()  # 0 in the middle, 1 right, 2 left

    sigma, alpha = 0.25, 0.001
    x = torch.full((1, 2, 2), 0.35)
    cert = SmoothedClassifier(base, 3, sigma, bound="separate-pb").certify(x, 20, 500, alpha, 256, seeded(3))
    from diffsmooth.stats import clopper_pearson_lower as lower

    n_a = cert.counts[0]
    p_lower = lower(n_a, 500, 0.9 * alpha)  # 0.9 of alpha on p_A, 0.1 shared by the 2 others
    p_b = max(1 - lower(500 - c, 500, 0.05 * alpha) for c in cert.counts[1:])
    assert cert.prediction == 0 and cert.selected_class == 0
    assert cert.p_lower == pytest.approx(p_lower, abs=1e-12)
    assert cert.p_b_upper == pytest.approx(min(p_b, 1 - p_lower), abs=1e-12)
    assert cert.radius == pytest.approx(sigma / 2 * (norm.ppf(p_lower) - norm.ppf(cert.p_b_upper)), abs=1e-12)


def test_unknown_bound():
    with pytest.raises(InputError, match="^unknown bound 'pb'; choose one of: cohen, separate-pb"):
        SmoothedClassifier(lambda x: x, 2, 0.5, bound="pb")
