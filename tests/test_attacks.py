"""Attacks: PGD against h and g on bases with closed-form answers, empirical accuracy,
the certificate audit (a planted violation and a correct run), validation, gradients
through the purifier and the local copies."""

import math

import pytest
import torch
from scipy.stats import norm
from torch import nn

from diffsmooth import SmoothedClassifier
from diffsmooth.attacks import (
    AttackConfig,
    AuditSettings,
    EmpiricalSettings,
    attack,
    attack_surface,
    audit,
    audit_rows,
    auditable_rows,
    check_certify_rows,
    empirical_accuracy,
    summarize_audit,
)
from diffsmooth.defenses import DenoisedSmoothing, DiffSmooth, Gaussian
from diffsmooth.results import Row, read_rows, write_results
from diffsmooth.validate import InputError


def seeded(seed):
    return torch.Generator().manual_seed(seed)


class HalfSpace(nn.Module):
    """Scores (-s, s) with s = w.x + b on (B, 1, 4, 4) images, w = ones / 4 (unit norm), b = -2.

    h is the half-space s > 0 (class 1); so is the smoothed g, and the distance of x to
    the boundary, s(x), is both the true certified radius and the smallest l2
    perturbation that changes the class (inside [0,1] for the images used here)."""

    def forward(self, x):
        s = self.signed_distance(x)
        return torch.stack([-s, s], dim=1)

    @staticmethod
    def signed_distance(x):
        return x.reshape(x.shape[0], -1).sum(dim=1) / 4 - 2.0


def constant_images(levels, dtype=torch.float32):
    """(K, 1, 4, 4) images of constant pixels ``c``: distance 4c - 2 to the half-space,
    and the nearest boundary point (all pixels 1/2) lies inside [0,1]."""
    return torch.tensor(levels, dtype=dtype).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()


# -- PGD on closed forms -------------------------------------------------------------------


def test_pgd_on_the_base_reaches_the_closed_form_minimal_perturbation_within_2_percent():
    xs = constant_images([0.6, 0.65, 0.7, 0.8])
    d = HalfSpace.signed_distance(xs)
    smoothed = SmoothedClassifier(HalfSpace(), 2, sigma=0.25)
    config = AttackConfig(target="base", steps=20, eot=1)
    above = attack(smoothed, xs, [1] * 4, (1.02 * d).tolist(), config, seeded(0))
    # 2% past the minimal perturbation every image flips, inside its budget ...
    assert (HalfSpace()(above.x_adv).argmax(1) == 0).all()
    assert (above.perturbation_norm <= 1.02 * d + 1e-6).all()
    below = attack(smoothed, xs, [1] * 4, (0.98 * d).tolist(), config, seeded(0))
    # ... and 2% short, PGD has used its whole budget straight towards the boundary.
    assert (HalfSpace()(below.x_adv).argmax(1) == 1).all()
    torch.testing.assert_close(HalfSpace.signed_distance(below.x_adv), 0.02 * d, atol=1e-5, rtol=0)


def test_smoothed_attack_on_the_half_space_moves_along_the_normal():
    """SmoothAdv's EOT gradient on a half-space points along -w whatever the noise: the
    attacked point's distance is d - eps (the smoothed g is the same half-space)."""
    xs = constant_images([0.6, 0.7, 0.8], dtype=torch.float64)
    d = HalfSpace.signed_distance(xs)
    smoothed = SmoothedClassifier(HalfSpace(), 2, sigma=0.25)
    result = attack(smoothed, xs, [1, 1, 1], 0.3, AttackConfig(steps=20, eot=8), [seeded(i) for i in range(3)])
    assert result.x_adv.dtype == torch.float64 and result.loss.dtype == torch.float64
    torch.testing.assert_close(HalfSpace.signed_distance(result.x_adv), d - 0.3, atol=1e-6, rtol=0)
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0


def test_projection_keeps_pixels_in_0_1_and_the_ball():
    """An image at the corner of [0,1]: the unconstrained step leaves the box; the result does not."""
    xs = torch.zeros(2, 1, 4, 4)
    xs[1] = 1.0
    smoothed = SmoothedClassifier(HalfSpace(), 2, sigma=0.25)
    result = attack(smoothed, xs, [0, 1], 3.0, AttackConfig(target="base", steps=10, eot=1), seeded(0))
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0
    assert (result.perturbation_norm <= 3.0 + 1e-6).all()
    # Constant images: the steepest direction is all pixels alike, so 3.0 / 4 per pixel.
    torch.testing.assert_close(result.x_adv[0], torch.full((1, 4, 4), 0.75))
    torch.testing.assert_close(result.x_adv[1], torch.full((1, 4, 4), 0.25))


class Templates(nn.Module):
    """An undefended linear classifier: logits_k = p_k . (x - 1/2) for +-1 patterns p_k."""

    def __init__(self, patterns):
        super().__init__()
        self.fc = nn.Linear(patterns.shape[1], patterns.shape[0], bias=False)
        self.fc.weight.data.copy_(patterns)

    def forward(self, x):
        return self.fc(x.flatten(1) - 0.5)


def faint_pattern_data(k=20, classes=10, amplitude=0.02):
    """Images 1/2 + amplitude p_label (+ a little noise): a margin of about
    amplitude * 784 / sqrt(2 * 784) = 0.4 in l2 for the template classifier."""
    g = seeded(5)
    patterns = torch.randint(0, 2, (classes, 784), generator=g).float() * 2 - 1
    labels = torch.arange(k) % classes
    xs = 0.5 + amplitude * patterns[labels] + 0.005 * torch.randn(k, 784, generator=g)
    return Templates(patterns).eval(), xs.clamp(0, 1).view(k, 1, 28, 28), labels


def test_eps_half_flips_most_predictions_of_an_undefended_classifier():
    model, xs, labels = faint_pattern_data()
    base = Gaussian(model)
    smoothed = SmoothedClassifier(base, 10, sigma=0.12)
    with torch.no_grad():
        assert torch.equal(base(xs).argmax(1), labels)
    config = AttackConfig(target="base", steps=10, eot=1)
    flipped = {}
    for eps in (0.1, 0.5):
        result = attack(smoothed, xs, labels, eps, config, [seeded(i) for i in range(len(xs))])
        with torch.no_grad():
            flipped[eps] = float((base(result.x_adv).argmax(1) != labels).float().mean())
    assert flipped[0.5] >= 0.9
    assert flipped[0.1] <= 0.1


def test_empirical_accuracy_predicts_at_the_attacked_point():
    """Distance 0.4 to the half-space: PREDICT keeps the class after an attack of 0.2
    (p = Phi(0.2 / 0.25) = 0.79) and loses it after 0.9 (p = Phi(-2) = 0.02)."""
    xs = constant_images([0.6, 0.6])
    smoothed = SmoothedClassifier(HalfSpace(), 2, sigma=0.25)
    records = empirical_accuracy(
        smoothed, xs, [1, 1], [0.2, 0.9], EmpiricalSettings(AttackConfig(steps=10, eot=4), n=500, alpha=0.001,
                                                            batch_size=1000),
        generators=[seeded(1), seeded(2)], indices=[7, 9],
    )
    assert [(r.idx, r.eps) for r in records] == [(7, 0.2), (7, 0.9), (9, 0.2), (9, 0.9)]
    assert [r.predict for r in records] == [1, 0, 1, 0]
    assert [r.correct for r in records] == [True, False, True, False]
    assert all(r.perturbation_norm == pytest.approx(r.eps, rel=1e-5) for r in records)
    assert all(r.label == 1 and r.seconds > 0 for r in records)


# -- reproducibility -----------------------------------------------------------------------


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)  # only to build the weights
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 3))

    def forward(self, x):
        return self.net(x)


def test_same_generators_same_attack_and_packing_does_not_matter():
    xs = torch.rand(3, 1, 4, 4, generator=seeded(3))
    smoothed = SmoothedClassifier(SmallNet().eval(), 3, sigma=0.5)
    config = AttackConfig(steps=5, eot=4, restarts=2)
    together = attack(smoothed, xs, [0, 1, 2], 0.5, config, [seeded(10 + i) for i in range(3)])
    again = attack(smoothed, xs, [0, 1, 2], 0.5, config, [seeded(10 + i) for i in range(3)])
    assert torch.equal(together.x_adv, again.x_adv) and torch.equal(together.loss, again.loss)
    alone = [attack(smoothed, xs[i : i + 1], [i], 0.5, config, [seeded(10 + i)]) for i in range(3)]
    torch.testing.assert_close(torch.cat([a.x_adv for a in alone]), together.x_adv, atol=1e-6, rtol=0)
    other = attack(smoothed, xs, [0, 1, 2], 0.5, config, [seeded(20 + i) for i in range(3)])
    assert not torch.equal(other.x_adv, together.x_adv)


def test_draws_split_over_calls_give_the_same_loss_and_step():
    """Without smoothing noise every draw is alike: the log-sum-exp combination over calls
    must give -log p_y and the same steps as one call."""
    xs = torch.rand(2, 1, 4, 4, generator=seeded(4))
    smoothed = SmoothedClassifier(SmallNet().eval(), 3, sigma=0.5)
    one = attack(smoothed, xs, [0, 1], 0.4, AttackConfig(target="base", steps=3, eot=5, batch_size=100), seeded(0))
    split = attack(smoothed, xs, [0, 1], 0.4, AttackConfig(target="base", steps=3, eot=5, batch_size=2), seeded(0))
    torch.testing.assert_close(split.x_adv, one.x_adv, atol=1e-6, rtol=0)
    torch.testing.assert_close(split.loss, one.loss, atol=1e-5, rtol=0)
    with torch.no_grad():
        expected = -torch.log_softmax(SmallNet()(one.x_adv), dim=1)[[0, 1], [0, 1]]
    torch.testing.assert_close(one.loss, expected, atol=1e-5, rtol=0)


def test_forward_calls_respect_the_batch_size():
    """eot = 5 draws for 3 images at batch_size 4: each image's full chunk of 4 alone, the
    remainders of 1 packed together; once per step and once for the final loss."""
    sizes = []

    class Recording(SmallNet):
        def forward(self, x):
            sizes.append(x.shape[0])
            return super().forward(x)

    smoothed = SmoothedClassifier(Recording().eval(), 3, sigma=0.5)
    attack(smoothed, torch.rand(3, 1, 4, 4, generator=seeded(6)), [0, 1, 2], 0.3,
           AttackConfig(steps=1, eot=5, batch_size=4), seeded(0))
    assert sizes == [4, 4, 4, 3] * 2


# -- the audit -----------------------------------------------------------------------------


def test_audit_finds_a_planted_violation():
    """Faked certificates of radius R = d / 0.8: the base changes class at 0.8 R, just inside."""
    levels = [0.65, 0.7, 0.75]
    xs = constant_images(levels)
    d = HalfSpace.signed_distance(xs)
    rows = [Row(i, 1, 1, 1, 0.0, float(d[i]) / 0.8) for i in range(3)]
    smoothed = SmoothedClassifier(HalfSpace(), 2, sigma=0.25)
    records = audit_rows(smoothed, rows, xs, AuditSettings(AttackConfig(steps=10, eot=4), n=500, alpha=0.001,
                                                           batch_size=1000), generators=[seeded(i) for i in range(3)])
    report = summarize_audit(records, certify_alpha=0.001, alpha=0.001)
    assert report.audited == 3 and report.flipped == 3 and report.below_bound == 3
    for row, record in zip(rows, records):
        assert record.eps == pytest.approx(0.95 * row.radius)
        assert record.perturbation_norm == pytest.approx(record.eps, rel=1e-5)
        assert record.bound == pytest.approx(norm.cdf((row.radius - record.perturbation_norm) / 0.25), abs=1e-9)
        assert record.p_upper < 0.5 and record.count < 250


def test_audit_of_a_correct_certify_run_finds_no_violation():
    levels = [0.58 + 0.02 * i for i in range(10)]
    xs = constant_images(levels)
    smoothed = SmoothedClassifier(HalfSpace(), 2, sigma=0.25)
    certs = smoothed.certify_batch(xs, n0=100, n=2000, alpha=0.001, batch_size=4000,
                                   generators=[seeded(100 + i) for i in range(10)])
    rows = [Row(i, 1, -1 if c.abstained else c.prediction, int(c.prediction == 1), 0.0, c.radius)
            for i, c in enumerate(certs)]
    assert sum(r.correct for r in rows) == 10
    report = audit(smoothed, rows, lambda i: (xs[i], 1),
                   AuditSettings(AttackConfig(steps=10, eot=4), n=2000, alpha=0.001, batch_size=4000),
                   certify_alpha=0.001, generator_for=lambda i: seeded(1000 + i), group=4)
    assert report.audited == 10 and report.flipped == 0 and report.below_bound == 0
    assert report.expected_at_most == pytest.approx(10 * 0.0015)
    # The attack spent its budget: p_c at the attacked point sits near Cohen's bound for
    # the true distance, above the bound of the (smaller) certified radius.
    for record in report.records:
        true_p = norm.cdf((float(HalfSpace.signed_distance(xs[record.idx : record.idx + 1])) - record.eps) / 0.25)
        assert record.p_lower <= true_p <= record.p_upper
        assert record.bound <= true_p


def test_audit_violations_stay_within_alpha_over_many_certificates():
    """Soundness: on the half-space the attack is optimal, so a violation needs a certificate
    that overclaims (probability <= certify_alpha) or an interval that misses (<= alpha / 2).
    At alphas large enough to see them, the count stays within a binomial bound of that rate."""
    k, certify_alpha, alpha = 300, 0.05, 0.05
    xs = torch.rand(k, 1, 4, 4, generator=seeded(11)) * 0.3 + 0.55  # distances 0.2 .. 1.4
    smoothed = SmoothedClassifier(HalfSpace(), 2, sigma=0.25)
    certs = smoothed.certify_batch(xs, n0=50, n=200, alpha=certify_alpha, batch_size=10_000,
                                   generators=[seeded(2000 + i) for i in range(k)])
    rows = [Row(i, 1, -1 if c.abstained else c.prediction, int(c.prediction == 1), 0.0, c.radius)
            for i, c in enumerate(certs)]
    todo = auditable_rows(rows, sigma=0.25)
    assert len(todo) > k / 2
    xs_todo = torch.stack([xs[r.idx] for r in todo])
    records = audit_rows(smoothed, todo, xs_todo,
                         AuditSettings(AttackConfig(steps=10, eot=2), n=200, alpha=alpha, batch_size=10_000),
                         generators=[seeded(5000 + r.idx) for r in todo])
    report = summarize_audit(records, certify_alpha, alpha)
    rate = certify_alpha + alpha / 2
    assert report.below_bound <= report.audited * rate + 3 * math.sqrt(report.audited * rate * (1 - rate))
    assert report.flipped <= report.below_bound


def test_audit_skips_abstentions_and_misclassified_rows():
    rows = [Row(0, 1, 1, 1, 0.0, 0.3), Row(1, 1, -1, 0, 0.0, 0.0), Row(2, 0, 1, 0, 0.0, 0.2), Row(3, 1, 1, 1, 0.0, 0.0)]
    assert [r.idx for r in auditable_rows(rows, sigma=0.25)] == [0]


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.0, -0.5, float("nan"), float("inf"), True])
def test_bad_eps(eps):
    smoothed = SmoothedClassifier(HalfSpace(), 2, sigma=0.25)
    with pytest.raises(InputError, match=r"^eps must be a positive l2 radius"):
        attack(smoothed, constant_images([0.6]), [1], eps, AttackConfig())


def test_bad_eps_lists():
    smoothed = SmoothedClassifier(HalfSpace(), 2, sigma=0.25)
    run = lambda eps: empirical_accuracy(smoothed, constant_images([0.6]), [1], eps,  # noqa: E731
                                         EmpiricalSettings(AttackConfig(), n=10, alpha=0.01, batch_size=10))
    with pytest.raises(InputError, match="^eps must be a positive"):
        run([0.25, 0.0])
    with pytest.raises(InputError, match="^give at least one eps"):
        run([])
    with pytest.raises(InputError, match="^eps values repeat"):
        run([0.5, 0.5])


@pytest.mark.parametrize(
    "change,word",
    [
        (dict(steps=0), "^steps "),
        (dict(eot=0), "^eot "),
        (dict(restarts=1.5), "^restarts "),
        (dict(step_scale=0.0), "^step_scale "),
        (dict(target="g"), "^unknown target "),
        (dict(purifier_gradient="exact"), "^unknown purifier_gradient "),
    ],
)
def test_bad_attack_config(change, word):
    with pytest.raises(InputError, match=word):
        AttackConfig(**change)


def test_bad_labels_and_bases():
    smoothed = SmoothedClassifier(HalfSpace(), 2, sigma=0.25)
    with pytest.raises(InputError, match="^labels must lie in 0..1"):
        attack(smoothed, constant_images([0.6]), [2], 0.5, AttackConfig())
    with pytest.raises(InputError, match="^labels must hold one class per image"):
        attack(smoothed, constant_images([0.6]), [1, 1], 0.5, AttackConfig())
    labels_only = SmoothedClassifier(lambda x: (HalfSpace.signed_distance(x) > 0).long(), 2, sigma=0.25)
    with pytest.raises(InputError, match="^PGD needs a base that returns scores"):
        attack(labels_only, constant_images([0.6]), [1], 0.5, AttackConfig())


def test_a_predict_tsv_is_not_a_certify_result(tmp_path):
    path = tmp_path / "predict.tsv"
    write_results(path, "predict", [Row(0, 1, 1, 1, 0.5)])
    _, rows = read_rows(path)
    with pytest.raises(InputError, match=r"^row 1 \(idx 0\) has no radius: it is a predict or attack row"):
        auditable_rows(rows, sigma=0.25)


@pytest.mark.parametrize(
    "row,word",
    [
        (Row(0, 1, 1, 0, 0.0, 0.3), "correct=0"),
        (Row(0, 1, -1, 0, 0.0, 0.3), "abstains"),
        (Row(0, 1, 1, 1, 0.0, -0.3), "radius -0.3"),
        (Row(0, 1, 1, 1, 0.0, 5.0), "more than any sample count certifies at sigma=0.25"),
    ],
)
def test_inconsistent_certify_rows(row, word):
    with pytest.raises(InputError, match=word):
        check_certify_rows([row], sigma=0.25)
    with pytest.raises(InputError, match="^no rows to audit"):
        check_certify_rows([], sigma=0.25)


def test_audit_rows_refuses_rows_that_are_not_certified_correct():
    smoothed = SmoothedClassifier(HalfSpace(), 2, sigma=0.25)
    with pytest.raises(InputError, match=r"^rows \[0\] are not certified-correct"):
        audit_rows(smoothed, [Row(0, 1, 0, 0, 0.0, 0.3)], constant_images([0.6]),
                   AuditSettings(AttackConfig(), n=10, alpha=0.01, batch_size=10))
    with pytest.raises(InputError, match="label 0 but the dataset's image 0 is class 1"):
        audit(smoothed, [Row(0, 0, 0, 1, 0.0, 0.3)], lambda i: (constant_images([0.6])[0], 1),
              AuditSettings(AttackConfig(), n=10, alpha=0.01, batch_size=10), certify_alpha=0.01)


# -- gradients through the methods ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_models(denoiser_path, classifier_path):
    from diffsmooth.classifiers import load_classifier
    from diffsmooth.diffusion import load_diffusion_model

    return load_diffusion_model(denoiser_path), load_classifier(classifier_path).eval()


def _grad(surface, x, generator=None):
    x = x.clone().requires_grad_(True)
    log_p = surface.log_probs(x, generator)
    (g,) = torch.autograd.grad(log_p[:, 0].sum(), x)
    return log_p.detach(), g


def test_gradients_flow_through_the_purifier_and_the_local_copies(tiny_models):
    from diffsmooth.diffusion import OneShotDenoiser

    model, clf = tiny_models
    x = torch.rand(2, 1, 28, 28, generator=seeded(0))
    denoiser = OneShotDenoiser(model, 0.25).eval()
    for base in (DenoisedSmoothing(denoiser, clf), DiffSmooth(denoiser, clf, m=3, vote="soft"),
                 DiffSmooth(denoiser, clf, m=3, vote="hard")):
        log_p, g = _grad(attack_surface(base), x)
        assert torch.isfinite(g).all() and float(g.abs().sum()) > 0
        if isinstance(base, DiffSmooth):
            # The surface is the log of the soft vote (the hard vote is attacked through it).
            soft = DiffSmooth(denoiser, clf, m=3, vote="soft")
            with torch.no_grad():
                torch.testing.assert_close(log_p.exp(), soft(x), atol=1e-5, rtol=0)
        else:
            with torch.no_grad():
                torch.testing.assert_close(log_p, torch.log_softmax(base(x), dim=1), atol=1e-5, rtol=0)


def test_bpda_replaces_the_chain_jacobian_by_the_identity(tiny_models):
    from diffsmooth.diffusion import MultiStepDenoiser

    model, clf = tiny_models
    x = torch.rand(1, 1, 28, 28, generator=seeded(1))
    chain = MultiStepDenoiser(model, 0.25, steps=3).eval()
    base = DenoisedSmoothing(chain, clf)
    _, full = _grad(attack_surface(base, "full"), x)
    _, bpda = _grad(attack_surface(base, "bpda"), x)
    with torch.no_grad():
        purified = chain(x)
    _, at_purified = _grad(attack_surface(Gaussian(clf)), purified)
    torch.testing.assert_close(bpda, at_purified, atol=1e-6, rtol=1e-5)
    assert torch.isfinite(full).all() and not torch.allclose(full, bpda)


def test_attack_leaves_diffsmooth_as_it_was(tiny_models):
    from diffsmooth.diffusion import OneShotDenoiser

    model, clf = tiny_models
    denoiser = OneShotDenoiser(model, 0.25).eval()
    xs = torch.rand(1, 1, 28, 28, generator=seeded(2))
    fixed = DiffSmooth(denoiser, clf, m=2, local_noise="fixed").eval()
    fresh = DiffSmooth(denoiser, clf, m=2, local_noise="fresh").eval()
    noises = fixed.local_noises(xs).clone()
    with torch.no_grad():
        fresh(xs)  # creates its generator
    state = fresh._fresh.get_state()
    assert attack_surface(fresh).stochastic and not attack_surface(fixed).stochastic
    config = AttackConfig(steps=2, eot=2)
    for base in (fixed, fresh):
        result = attack(SmoothedClassifier(base, 10, sigma=0.25), xs, [3], 0.5, config, seeded(0))
        assert result.x_adv.shape == xs.shape and float(result.perturbation_norm[0]) <= 0.5 + 1e-5
        assert math.isfinite(float(result.loss[0]))
    assert torch.equal(fixed.local_noises(xs), noises)
    assert torch.equal(fresh._fresh.get_state(), state)
    assert fixed.vote == "soft" and fixed.training is False
