"""Purifier-aware training: purified draws computed once (and cached), a batch taking one per image,
and train-classifier on them (issue #32)."""

from __future__ import annotations

import json

import pytest
import torch

from diffsmooth.classifiers import load_classifier
from diffsmooth.cli import main
from diffsmooth.training import purified
from diffsmooth.training.purified import _draw_generator, pick_draws, purified_draws


class Halve(torch.nn.Module):
    """A stand-in purifier with a closed form, counting its calls: x -> x / 2."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x / 2


@pytest.fixture
def images():
    return torch.rand(10, 1, 4, 4, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def small_batches(monkeypatch):
    monkeypatch.setattr(purified, "BATCH", 4)  # several chunks of the 10 images


def test_each_draw_is_the_purifier_on_its_own_noise(images):
    draws = purified_draws(Halve(), images, sigma=0.5, draws=3, seed=7, device=torch.device("cpu"))
    assert draws.shape == (3, 10, 1, 4, 4) and draws.dtype == torch.float16
    for k in range(3):
        g = _draw_generator(7, k)
        noisy = torch.cat([images[i:i + 4] + 0.5 * torch.randn(images[i:i + 4].shape, generator=g)
                           for i in range(0, 10, 4)])
        expected = (noisy / 2).clamp(0, 1).half()
        assert torch.equal(draws[k], expected)
    assert not torch.equal(draws[0], draws[1])


def test_the_cache_is_reused_only_for_the_same_settings(tmp_path, images):
    cache = tmp_path / "cache"
    first = Halve()
    a = purified_draws(first, images, 0.5, 2, 7, torch.device("cpu"), cache, purifier_id="p1")
    assert first.calls == 6 and json.loads((cache / "cache.json").read_text())["draws"] == [0, 1]
    again = Halve()
    assert torch.equal(purified_draws(again, images, 0.5, 2, 7, torch.device("cpu"), cache, purifier_id="p1"), a)
    assert again.calls == 0  # read from the cache
    other = Halve()
    b = purified_draws(other, images, 0.25, 2, 7, torch.device("cpu"), cache, purifier_id="p1")
    assert other.calls == 6 and not torch.equal(a, b)  # another sigma: computed afresh
    more = Halve()
    purified_draws(more, images, 0.25, 3, 7, torch.device("cpu"), cache, purifier_id="p1")
    assert more.calls == 3  # only the new draw


def test_a_batch_takes_one_draw_per_image(images):
    draws = torch.stack([torch.full((10, 1, 4, 4), float(k)) for k in range(4)]).half()
    picked = pick_draws(draws, torch.tensor([3, 1, 4]), torch.Generator().manual_seed(0))
    which = torch.randint(4, (3,), generator=torch.Generator().manual_seed(0))
    assert picked.dtype == torch.float32 and torch.equal(picked[:, 0, 0, 0], which.float())


def test_train_classifier_on_cached_purified_draws(tmp_path, capsys):
    ddpm = tmp_path / "ddpm"
    assert main(["train-diffusion", "--dataset", "digits", "--num-channels", "32", "--channel-mult", "1,2",
                 "--attention-resolutions", "", "--steps", "2", "--batch-size", "8", "--out", str(ddpm),
                 "--quiet"]) == 0
    cache = tmp_path / "cache"
    args = ["train-classifier", "--dataset", "digits", "--sigma", "0.12", "--purify-sigma", "0.5",
            "--finetune-on-purified", str(ddpm), "--purify-draws", "2", "--purify-cache", str(cache), "--epochs", "1",
            "--batch-size", "16", "--train-limit", "32", "--eval-limit", "16", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert sorted(p.name for p in cache.iterdir()) == ["cache.json", "draw0.safetensors", "draw1.safetensors"]
    assert main([*args, "--out", str(tmp_path / "b")]) == 0  # from the cache: the same training
    a, b = load_classifier(tmp_path / "a"), load_classifier(tmp_path / "b")
    assert a.training_info["config"]["purify_draws"] == 2
    # the purifier's weights are named by hash, as in the cache's record
    assert a.training_info["purifier_sha256"] == json.loads((cache / "cache.json").read_text())["purifier"]
    assert len(a.training_info["purifier_sha256"]) == 64
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert main(["train-classifier", "--dataset", "digits", "--sigma", "0.12", "--purify-draws", "2", "--epochs",
                 "1", "--out", str(tmp_path / "c"), "--quiet"]) == 2
    assert "--purify-draws needs --finetune-on-purified" in capsys.readouterr().err
    assert main([*args[:9], "--purify-draws", "0", "--epochs", "1", "--out", str(tmp_path / "zz")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--purify-draws" in err and len(err.splitlines()) == 1 and not list(tmp_path.glob("zz*"))
