"""The methods as base classifiers: DiffSmooth, DDS and Gaussian RS on small stand-in models."""

import pytest
import torch
from torch import nn

from diffsmooth.defenses import DenoisedSmoothing, DiffSmooth, Gaussian
from diffsmooth.errors import InputError


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
    [(dict(m=0), "^m "), (dict(local_sigma=-1.0), "^local_sigma"), (dict(vote="mean"), "^vote"), (dict(local_noise="x"), "^local_noise")],
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
