"""The fast path keeps the base's labels: exact in float32, >= 99% under bf16 autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffsmooth.classifiers import create_classifier
from diffsmooth.defenses import DiffSmooth, Gaussian
from diffsmooth.diffusion import OneShotDenoiser
from diffsmooth.diffusion.adm import adm_unet
from diffsmooth.diffusion.presets import DiffusionModel
from diffsmooth.diffusion.schedules import NoiseSchedule
from diffsmooth.fast import (
    FastConfig,
    _largest_fitting,  # the search behind auto_batch_size, testable without a GPU
    accelerate,
    auto_batch_size,
    pad_batch,
)
from diffsmooth.validate import InputError


def _prototype_task(seed: int = 0):
    """Ten smooth random 28x28 prototypes; samples are a prototype plus N(0, 0.5^2) noise."""
    g = torch.Generator().manual_seed(seed)
    protos = F.interpolate(torch.randn(10, 1, 7, 7, generator=g), size=28, mode="bilinear").sigmoid()

    def draw(b: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 10, (b,), generator=g)
        return protos[y] + 0.5 * torch.randn(b, 1, 28, 28, generator=g), y

    return draw


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small CPU kernels run several times faster on one thread when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained_ish(one_thread):
    """A narrow fmnist_cnn after 40 SGD steps on the prototype task (about 65% accurate):
    its labels spread over the classes with realistic margins, so agreement is not trivial."""
    torch.manual_seed(0)  # parameter initialisation only; data come from explicit generators
    draw = _prototype_task()
    clf = create_classifier("fmnist_cnn", width=8, hidden=32)
    opt = torch.optim.SGD(clf.parameters(), lr=0.05, momentum=0.9)
    for _ in range(40):
        x, y = draw(32)
        loss = F.cross_entropy(clf(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = draw(512)
    return clf.eval(), x, y


def _tiny_diffsmooth(classifier, **kwargs) -> DiffSmooth:
    torch.manual_seed(1)
    unet = adm_unet("improved", image_size=28, in_channels=1, num_channels=32, channel_mult="1,2",
                    num_res_blocks=1, attention_resolutions="14", num_heads=1, dropout=0.0,
                    learn_sigma=False, use_scale_shift_norm=True).eval()
    model = DiffusionModel(unet, NoiseSchedule("cosine", 1000), True, 1, 28, "tiny")
    return DiffSmooth(OneShotDenoiser(model, 0.25), classifier, m=3, local_sigma=0.25, **kwargs).eval()


def test_float32_fast_path_is_exact(trained_ish):
    clf, x, _ = trained_ish
    with torch.inference_mode():
        ref = clf(x)
        out = accelerate(Gaussian(clf)).eval()(x)
    assert out.dtype == torch.float32
    assert torch.equal(out, ref)


def test_bf16_autocast_agrees_on_99_percent(trained_ish):
    clf, x, y = trained_ish
    with torch.inference_mode():
        ref = clf(x)
        out = accelerate(clf, precision="bfloat16")(x)
    labels = ref.argmax(1)
    # The check means something only if the model is not constant and not perfect.
    assert torch.bincount(labels, minlength=10).gt(0).sum() >= 8
    assert 0.4 < (labels == y).float().mean() < 0.95
    assert out.dtype == torch.float32
    assert (out.argmax(1) == labels).float().mean() >= 0.99
    assert not torch.equal(out, ref)  # autocast really ran in bf16


def test_channels_last_and_padding_keep_diffsmooth_labels(trained_ish):
    clf, x, _ = trained_ish
    base = _tiny_diffsmooth(clf)
    noisy = x[:13].clamp(0, 1) + 0.25 * torch.randn(13, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ref = base(noisy)
        fast = accelerate(base, channels_last=True, static_batch=8)
        out = fast(noisy)  # one full batch of 8 and one of 5 padded to 8
    assert fast.static_batch == 8
    assert out.shape == ref.shape == (13, 10)
    assert torch.equal(out.argmax(1), ref.argmax(1))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_padding_leaves_real_rows_unchanged(trained_ish):
    clf, x, _ = trained_ish
    rows = x[:5]
    padded = pad_batch(rows, 8)
    assert padded.shape == (8, 1, 28, 28)
    assert torch.equal(padded[:5], rows) and torch.equal(padded[5:], rows[-1:].expand(3, -1, -1, -1))
    with torch.inference_mode():
        # Eval-mode rows never interact; only kernel choices for the batch size change the last bits.
        torch.testing.assert_close(clf(padded)[:5], clf(rows), atol=1e-5, rtol=1e-5)
        # Without a fixed size the static batch grows to the largest call seen.
        grown = accelerate(clf, cuda_graphs=True)  # graphs are CUDA-only; on CPU only the static batch runs
        grown(x[:4])
        assert grown.static_batch == 4
        out = grown(x[:6])
        assert grown.static_batch == 6
        # A shorter call is not padded where no graph must replay: it runs eagerly as it is.
        assert torch.equal(grown(x[:3]), clf(x[:3]))
        assert torch.equal(out, clf(x[:6]))
        # A fixed static batch (a run's batch size) splits longer calls; the short tail runs eagerly.
        fixed = accelerate(clf, compile=False, cuda_graphs=True, static_batch=4)
        assert torch.equal(fixed(x[:10]), torch.cat([clf(x[:4]), clf(x[4:8]), clf(x[8:10])]))
        assert fixed.static_batch == 4
    with pytest.raises(InputError, match="split"):
        pad_batch(x[:9], 8)


def test_describe_records_the_settings(trained_ish):
    clf, _, _ = trained_ish
    fast = accelerate(Gaussian(clf), precision="bfloat16", static_batch=64)
    info = fast.describe()
    assert info["method"] == "rs" and info["classifier"]["arch"] == "fmnist_cnn"
    assert info["precision"] == "bfloat16"
    assert info["acceleration"] == {"precision": "bfloat16", "channels_last": False, "compile": None,
                                    "cuda_graphs": False, "static_batch": 64}
    assert accelerate(clf, compile=True).describe()["acceleration"]["compile"] == "default"
    # Nothing that could change a score (float32, eager, row-block workers): described as the base itself.
    assert accelerate(Gaussian(clf), workers=2).describe() == Gaussian(clf).describe()
    assert accelerate(Gaussian(clf), static_batch=8).describe()["precision"] == "float32"


def test_bad_settings_raise_input_errors(trained_ish):
    clf, _, _ = trained_ish
    with pytest.raises(InputError, match="float32, bfloat16, float16"):
        accelerate(clf, precision="fp8")
    with pytest.raises(InputError, match="compile mode"):
        accelerate(clf, compile="fastest")
    with pytest.raises(InputError, match="static_batch"):
        FastConfig(static_batch=0)
    with pytest.raises(InputError, match="fresh"):
        accelerate(_tiny_diffsmooth(clf, local_noise="fresh"), cuda_graphs=True)
    with pytest.raises(InputError, match="nn.Module"):
        accelerate(lambda x: x)


def test_auto_batch_size_on_cpu_is_the_default():
    base = torch.nn.Identity()
    assert auto_batch_size(base, (1, 28, 28), "cpu") == 256
    assert auto_batch_size(base, (1, 28, 28), "cpu", max_batch=100) == 100
    assert auto_batch_size(base, (1, 28, 28), "cpu", cpu_default=64) == 64
    with pytest.raises(InputError, match="fraction"):
        auto_batch_size(base, (1, 28, 28), "cpu", fraction=1.5)


def test_batch_search_finds_the_memory_limit():
    probes: list[int] = []

    def fits(b: int) -> bool:
        probes.append(b)
        return b <= 300

    best = _largest_fitting(fits, max_batch=4096, multiple=8)
    # Doubling 1..512, then bisection on multiples of 8: 384 no, 320 no, 288 yes, 304 no.
    assert probes == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 384, 320, 288, 304]
    assert best == 288
    assert _largest_fitting(lambda b: True, max_batch=1000) == 1000
    assert _largest_fitting(lambda b: b <= 700, max_batch=1000, refine=10) == 696
    assert _largest_fitting(lambda b: False, max_batch=1000) == 0


@pytest.mark.slow
def test_compiled_fast_path_matches_eager(trained_ish):
    clf, x, _ = trained_ish
    with torch.inference_mode():
        ref = clf(x[:20])
        fast = accelerate(clf, compile=True, static_batch=16)
        out = fast(x[:20])  # 16 + 4 padded to 16: one compiled shape
    assert torch.equal(out.argmax(1), ref.argmax(1))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
