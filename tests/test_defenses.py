"""The methods as base classifiers: DiffSmooth, DDS and Gaussian RS on small stand-in models."""

import pytest
import torch
from torch import nn

from diffsmooth.defenses import DenoisedSmoothing, DiffSmooth, Gaussian
from diffsmooth.validate import InputError


class Blur(nn.Module):
    """A stand-in purifier: noisy (B,C,H,W) -> clamped 3x3 average, in [0,1]."""

    def forward(self, x):
        return nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False).clamp(0, 1)


class Linear(nn.Module):
    def __init__(self, channels=1, size=6, classes=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.in_channels, self.image_size = channels, size
        self.fc = nn.Linear(channels * size * size, classes)
        self.calls = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return self.fc(x.flatten(1))


def noisy(b=3, c=1, size=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, size, size, generator=g) + 0.25 * torch.randn(b, c, size, size, generator=g)


def test_diffsmooth_with_one_noiseless_copy_is_denoised_smoothing():
    f = Linear()
    x = noisy()
    dds = DenoisedSmoothing(Blur(), f)(x)
    ds = DiffSmooth(Blur(), f, m=1, local_sigma=0.0)(x)
    torch.testing.assert_close(ds, dds.softmax(dim=1))
    assert torch.equal(ds.argmax(1), dds.argmax(1))


def test_hard_and_soft_votes_agree_when_all_copies_agree():
    f = Linear()
    x = noisy(b=8)
    soft = DiffSmooth(Blur(), f, m=5, local_sigma=0.0, vote="soft")(x)
    hard = DiffSmooth(Blur(), f, m=5, local_sigma=0.0, vote="hard")(x)
    assert torch.equal(soft.argmax(1), hard.argmax(1))
    assert torch.equal(hard, nn.functional.one_hot(hard.argmax(1), 4).float())


def test_hard_vote_counts_copies():
    class ByCopy(nn.Module):
        # The j-th call (copy j of every image) votes class 0 for j < 3, else class 1.
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            vote = 0 if self.calls % 5 < 3 else 1
            self.calls += 1
            return nn.functional.one_hot(torch.full((x.shape[0],), vote), 3).float() * 10

    scores = DiffSmooth(nn.Identity(), ByCopy(), m=5, local_sigma=0.1, vote="hard")(torch.zeros(2, 1, 2, 2))
    torch.testing.assert_close(scores, torch.tensor([[0.6, 0.4, 0.0]] * 2))


def test_each_copy_is_one_classifier_call_of_the_whole_batch():
    """Copy j's logits then never depend on how many copies are made (a grid shares them)."""
    f = Linear()
    DiffSmooth(Blur(), f, m=5, local_sigma=0.25)(noisy(b=3))
    assert f.calls == [(3, 1, 6, 6)] * 5


def test_fixed_noises_of_a_smaller_m_are_a_prefix_of_a_larger_m():
    like = torch.zeros(2, 3, 7, 7)  # 147 values: not a multiple of torch's vectorised draw
    small = DiffSmooth(Blur(), Linear(), m=3, local_sigma=0.25).local_noises(like)
    large = DiffSmooth(Blur(), Linear(), m=10, local_sigma=0.25).local_noises(like)
    assert torch.equal(small, large[:3])


def test_fixed_local_noise_is_the_same_across_calls_and_instances_and_differs_by_seed():
    like = torch.zeros(2, 1, 6, 6)
    a = DiffSmooth(Blur(), Linear(), m=5, local_sigma=0.25, seed=42)
    b = DiffSmooth(Blur(), Linear(), m=5, local_sigma=0.25, seed=42)
    c = DiffSmooth(Blur(), Linear(), m=5, local_sigma=0.25, seed=43)
    first = a.local_noises(like)
    assert first.shape == (5, 1, 6, 6)
    assert torch.equal(first, a.local_noises(like))
    assert torch.equal(first, b.local_noises(like))
    assert not torch.equal(first, c.local_noises(like))
    # Their scale is local_sigma.
    assert 0.15 < float(first.std()) < 0.35


def test_fresh_local_noise_changes_between_calls_but_repeats_across_runs():
    like = torch.zeros(2, 1, 6, 6)
    a = DiffSmooth(Blur(), Linear(), m=5, local_sigma=0.25, local_noise="fresh", seed=1)
    b = DiffSmooth(Blur(), Linear(), m=5, local_sigma=0.25, local_noise="fresh", seed=1)
    first, second = a.local_noises(like), a.local_noises(like)
    assert not torch.equal(first, second)
    assert torch.equal(first, b.local_noises(like))


def test_gaussian_is_the_classifier():
    f = Linear()
    x = noisy()
    torch.testing.assert_close(Gaussian(f)(x), f.fc(x.flatten(1)))


def test_purified_images_are_resized_to_the_classifier_input():
    f = Linear(size=4)
    out = DenoisedSmoothing(Blur(), f)(noisy(size=6))
    assert out.shape == (3, 4) and f.calls == [(3, 1, 4, 4)]


def test_channel_mismatch_names_both_sides():
    with pytest.raises(InputError, match="expects 1-channel images but the denoiser gives 3 channels"):
        DiffSmooth(Blur(), Linear(channels=1))(noisy(c=3))


@pytest.mark.parametrize(
    "kwargs,word",
    [(dict(m=0), "^m "), (dict(local_sigma=-1.0), "^local_sigma"), (dict(vote="mean"), "^unknown vote"), (dict(local_noise="x"), "^unknown local_noise")],
)
def test_bad_parameters(kwargs, word):
    with pytest.raises(InputError, match=word):
        DiffSmooth(Blur(), Linear(), **kwargs)


def test_describe_records_the_parameters():
    info = DiffSmooth(Blur(), Linear(), m=3, local_sigma=0.12, vote="hard", local_noise="fresh", seed=7).describe()
    assert {k: info[k] for k in ("method", "m", "local_sigma", "vote", "local_noise", "local_noise_seed")} == {
        "method": "diffsmooth", "m": 3, "local_sigma": 0.12, "vote": "hard", "local_noise": "fresh", "local_noise_seed": 7,
    }


@pytest.mark.parametrize("method", ["rs", "dds", "diffsmooth"])
def test_every_method_certifies_end_to_end(method, classifier_path, denoiser_path):
    """Real (tiny, random) checkpoints through build_base and the certifier, on CPU."""
    from diffsmooth import MethodSpec, SmoothedClassifier, build_base

    spec = MethodSpec(method, "fashion-mnist", sigma=0.25, denoiser=str(denoiser_path),
                      classifier=str(classifier_path), m=3, local_sigma=0.25)
    base = build_base(spec)
    xs = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    certs = SmoothedClassifier(base, 10, 0.25).certify_batch(
        xs, n0=8, n=24, alpha=0.01, batch_size=32, generators=[torch.Generator().manual_seed(i) for i in range(2)])
    assert [sum(c.counts) for c in certs] == [24, 24] and [sum(c.selection_counts) for c in certs] == [8, 8]
    info = base.describe()
    assert info["method"] == method
    if method != "rs":
        assert info["denoiser"]["t_star"] > 0 and info["denoiser"]["sigma"] == 0.25


# -- DensePure ----------------------------------------------------------------------------

from diffsmooth.defenses import DensePure  # noqa: E402
from diffsmooth.diffusion import MultiStepDenoiser, OneShotDenoiser, load_diffusion_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny_ddpm(denoiser_path):
    return load_diffusion_model(denoiser_path)


def test_densepure_with_one_run_of_one_step_is_one_shot_dds(tiny_ddpm):
    f = Linear(channels=1, size=28, classes=10, seed=3)
    x = noisy(b=16, size=28, seed=4)
    with torch.no_grad():
        dds = DenoisedSmoothing(OneShotDenoiser(tiny_ddpm, 0.25), f)(x)
        dense = DensePure(MultiStepDenoiser(tiny_ddpm, 0.25, steps=1), f, runs=1)(x)
    assert dds.argmax(1).unique().numel() > 1  # the labels vary, so the comparison says something
    assert torch.equal(dense, nn.functional.one_hot(dds.argmax(1), 10).float())


def test_densepure_votes_over_runs_with_their_own_noise(tiny_ddpm):
    f = Linear(channels=1, size=28, classes=10, seed=3)
    x = noisy(b=4, size=28, seed=5)
    denoiser = MultiStepDenoiser(tiny_ddpm, 0.5, steps=3, method="ddpm")
    with torch.no_grad():
        votes = DensePure(denoiser, f, runs=5, seed=7)(x)
        # By hand: the 5 runs of image i are rows k * 4 + i of one batched reverse chain.
        runs = denoiser(x.repeat(5, 1, 1, 1), generator=torch.Generator().manual_seed(7))
        labels = f(runs).argmax(1).view(5, 4)
    want = torch.stack([torch.bincount(labels[:, i], minlength=10) for i in range(4)]).float() / 5
    assert torch.equal(votes, want)
    assert not torch.equal(runs[:4], runs[4:8])  # different runs draw different noise
    assert torch.allclose(votes.sum(1), torch.ones(4))
    assert float(votes.max(1).values.min()) < 1  # some image's runs disagree: a real vote
    assert f.calls[-2:] == [(20, 1, 28, 28)] * 2  # one classifier call for all runs


def test_densepure_checks_and_describe(tiny_ddpm):
    f = Linear(channels=1, size=28, classes=10)
    with pytest.raises(InputError, match="^runs "):
        DensePure(MultiStepDenoiser(tiny_ddpm, 0.25, steps=2, method="ddpm"), f, runs=0)
    with pytest.raises(InputError, match="deterministic reverse chain"):
        DensePure(MultiStepDenoiser(tiny_ddpm, 0.25, steps=4, method="ddim"), f, runs=3)
    info = DensePure(MultiStepDenoiser(tiny_ddpm, 0.25, steps=4, method="ddpm"), f, runs=3, seed=2).describe()
    assert (info["method"], info["runs"], info["steps"], info["reverse_chain"], info["seed"]) == (
        "densepure", 3, 4, "ddpm", 2)
    assert info["denoiser"]["mode"] == "multi-step-ddpm"


@pytest.mark.slow
def test_compiled_densepure_votes_as_eager(tiny_ddpm):
    """`--compile default` on the DensePure base (the model card's run): torch.compile once failed
    its own guard on the reverse step's schedule lookup; the compiled votes equal the eager ones."""
    from diffsmooth.fast import accelerate

    f = Linear(channels=1, size=28, classes=10, seed=3)
    x = noisy(b=4, size=28, seed=5)
    make = lambda: DensePure(MultiStepDenoiser(tiny_ddpm, 0.5, steps=2, method="ddpm"), f, runs=3, seed=7)  # noqa: E731
    with torch.inference_mode():
        eager = make()(x)
        compiled = accelerate(make(), compile=True)(x)
    assert torch.equal(compiled, eager)


@pytest.mark.parametrize("method", ["denoised", "densepure"])
def test_new_baselines_certify_end_to_end_with_the_separate_bound(method, classifier_path, denoiser_path, tmp_path):
    """Tiny random checkpoints through build_base and the certifier with the separate-pb bound."""
    from diffsmooth import MethodSpec, SmoothedClassifier, build_base
    from diffsmooth.denoisers import create_dncnn, save_denoiser

    if method == "denoised":
        dncnn = create_dncnn("dncnn", 1, generator=torch.Generator().manual_seed(0), depth=4, width=8, sigma=0.25)
        source = str(save_denoiser(tmp_path / "dncnn", dncnn.eval()))
    else:
        source = str(denoiser_path)
    spec = MethodSpec(method, "fashion-mnist", sigma=0.25, denoiser=source, classifier=str(classifier_path),
                      runs=2, steps=2)
    base = build_base(spec)
    xs = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    certs = SmoothedClassifier(base, 10, 0.25, bound="separate-pb").certify_batch(
        xs, n0=4, n=12, alpha=0.01, batch_size=16, generators=[torch.Generator().manual_seed(i) for i in range(2)])
    assert [sum(c.counts) for c in certs] == [12, 12]
    assert all(c.bound == "separate-pb" and 0 < c.p_b_upper < 1 for c in certs)
    info = base.describe()
    assert info["method"] == method
    if method == "denoised":
        assert info["denoiser"]["type"] == "DnCNN" and len(info["denoiser"]["sha256"]) == 64
    else:
        assert (info["runs"], info["steps"], info["reverse_chain"]) == (2, 2, "ddpm")


@pytest.mark.parametrize("change,message", [
    (dict(runs=0), "--runs must be a whole number >= 1, got 0"),
    (dict(steps=0), "--steps must be a whole number >= 1, got 0"),
    (dict(reverse_chain="euler"), "unknown --reverse-chain 'euler'; choose one of: ddim, ddpm"),
])
def test_densepure_spec_validation(change, message):
    from diffsmooth import MethodSpec, build_base

    with pytest.raises(InputError, match=message):
        build_base(MethodSpec("densepure", "fashion-mnist", sigma=0.25, **change))
