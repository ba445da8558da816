"""DnCNN denoisers: Salman et al.'s checkpoint layout, our format, the training objectives."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from diffsmooth.classifiers import create_classifier, save_classifier
from diffsmooth.data import load_dataset
from diffsmooth.denoisers import DnCNN, create_dncnn, load_denoiser, save_denoiser
from diffsmooth.training import DenoiserTrainConfig, denoiser_mse_loss, denoiser_stability_loss, train_denoiser
from diffsmooth.validate import InputError


def salman_dncnn(channels: int, width: int, depth: int = 17) -> nn.Sequential:
    """The layer list of Salman et al.'s DnCNN written out here, independently of our module:
    conv(bias) ReLU, (depth - 2) x [conv(no bias) BN ReLU], conv(no bias); output x - net(x)."""
    layers = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width, eps=1e-4), nn.ReLU()]
    layers.append(nn.Conv2d(width, channels, 3, padding=1, bias=False))
    net = nn.Sequential(*layers)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random weights and BatchNorm statistics, so that every tensor matters
        for name, t in net.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=gen))
            elif t.is_floating_point():
                t.copy_(0.05 * torch.randn(t.shape, generator=gen))
    return net.eval()


@pytest.mark.parametrize("arch,channels,width,prefix", [
    ("cifar_dncnn", 3, 64, ""),
    ("cifar_dncnn_wide", 3, 128, ""),
    ("imagenet_dncnn", 3, 64, "module."),  # saved from DataParallel
])
def test_salman_checkpoint_loads_and_reproduces_outputs(tmp_path, arch, channels, width, prefix):
    ref = salman_dncnn(channels, width)
    optimizer = torch.optim.Adam(ref.parameters(), lr=1e-3)
    ref(torch.rand(2, channels, 8, 8)).sum().backward()
    optimizer.step()  # a real optimizer state, as in their files
    path = tmp_path / "checkpoint.pth.tar"
    state = {f"{prefix}dncnn.{k}": v for k, v in ref.state_dict().items()}  # after the step
    torch.save({"epoch": 90, "arch": arch, "state_dict": state, "optimizer": optimizer.state_dict()}, path)

    model = load_denoiser(path)
    assert isinstance(model, DnCNN) and not model.training
    assert (model.config.in_channels, model.config.depth, model.config.width) == (channels, 17, width)
    x = torch.rand(3, channels, 10, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = x - ref(x)
        got = model(x)
    assert torch.allclose(got, want, atol=1e-6)
    assert model.training_info["epoch"] == 90 and model.training_info["arch"] == arch
    assert model.describe()["sha256"] == model.checkpoint_sha256 and len(model.checkpoint_sha256) == 64


def test_salman_checkpoint_with_wrong_keys_or_pickles_is_refused(tmp_path):
    ref = salman_dncnn(1, 8, depth=4)
    state = {f"dncnn.{k}": v for k, v in ref.state_dict().items()}
    extra = tmp_path / "extra.pth"
    torch.save({"state_dict": {**state, "dncnn.99.weight": torch.zeros(1)}}, extra)
    with pytest.raises(InputError, match=r"unexpected 1: dncnn\.99\.weight"):
        load_denoiser(extra)
    missing = tmp_path / "missing.pth"
    torch.save({k: v for k, v in state.items() if k != "dncnn.3.running_mean"}, missing)
    with pytest.raises(InputError, match=r"missing 1: dncnn\.3\.running_mean"):
        load_denoiser(missing)
    wrong_arch = tmp_path / "wide.pth"
    torch.save({"arch": "cifar_dncnn_wide", "state_dict": state}, wrong_arch)
    with pytest.raises(InputError, match="says arch 'cifar_dncnn_wide' but its convolutions have width 8"):
        load_denoiser(wrong_arch)
    pickled = tmp_path / "pickled.pth"
    torch.save({"state_dict": state, "model": ref}, pickled)
    with pytest.raises(InputError, match="^refused to load"):
        load_denoiser(pickled)
    with pytest.raises(InputError, match="not found"):
        load_denoiser(tmp_path / "nothing.pth")


def test_our_format_round_trips(tmp_path):
    model = create_dncnn("dncnn", in_channels=1, generator=torch.Generator().manual_seed(0), depth=5, width=16,
                         sigma=0.25, dataset="fashion-mnist")
    with torch.no_grad():  # move away from the identity initialization
        model.dncnn[-1].weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
    model.eval()
    weights = save_denoiser(tmp_path / "d", model, {"objective": "mse", "test_mse": 0.01})
    doc = json.loads((tmp_path / "d.json").read_text())
    assert doc["format"] == "diffsmooth-denoiser" and doc["depth"] == 5 and doc["width"] == 16
    assert doc["sigma"] == 0.25 and doc["training"]["objective"] == "mse" and weights.suffix == ".safetensors"
    loaded = load_denoiser(tmp_path / "d")
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.config == model.config and loaded.training_info["test_mse"] == 0.01
    with pytest.raises(InputError, match=r"expects noisy images \(B, 1, H, W\)"):
        loaded(torch.rand(2, 3, 8, 8))


def test_presets_and_identity_start():
    wide = create_dncnn("dncnn-wide", in_channels=3)
    assert wide.config.width == 128 and wide.config.depth == 17
    assert sum(isinstance(m, nn.Conv2d) for m in wide.dncnn) == 17
    x = torch.rand(1, 3, 6, 6)
    assert torch.equal(wide.eval()(x), x)  # the last convolution starts at zero
    with pytest.raises(InputError, match="unknown denoiser 'unet'; choose one of: dncnn, dncnn-wide"):
        create_dncnn("unet")


@pytest.fixture(scope="module")
def digits():
    x, y = load_dataset("digits", split="train").tensors()
    return x[:32], y[:32]


def _tiny_classifier() -> nn.Module:
    torch.manual_seed(0)  # parameter init only
    return create_classifier("fmnist_cnn", 10, dataset="digits", width=8, hidden=32, dropout=0.0)


def _fitted_classifier(digits) -> nn.Module:
    """The tiny classifier fitted to the clean batch, so that its labels carry information."""
    x, y = digits
    classifier = _tiny_classifier()
    opt = torch.optim.Adam(classifier.parameters(), lr=1e-2)
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(classifier(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return classifier.eval().requires_grad_(False)


@pytest.mark.parametrize("objective", ["mse", "stability"])
def test_each_objective_is_finite_and_falls_on_a_fixed_batch(objective, digits):
    x, _ = digits
    denoiser = create_dncnn("dncnn", 1, generator=torch.Generator().manual_seed(0), depth=5, width=16)
    classifier = _fitted_classifier(digits)
    before_weights = {k: v.clone() for k, v in classifier.state_dict().items()}

    def loss(gen):
        if objective == "mse":
            return denoiser_mse_loss(denoiser, x, 0.5, gen)
        return denoiser_stability_loss(denoiser, classifier, x, 0.5, gen)

    def fixed() -> float:
        denoiser.eval()
        with torch.no_grad():
            value = float(loss(torch.Generator().manual_seed(7)))
        denoiser.train()
        return value

    opt = torch.optim.Adam(denoiser.parameters(), lr=3e-3)
    before, gen = fixed(), torch.Generator().manual_seed(1)
    for _ in range(20):
        value = loss(gen)
        assert math.isfinite(float(value.detach()))
        opt.zero_grad()
        value.backward()
        opt.step()
    after = fixed()
    assert after < 0.7 * before, (before, after)
    assert all(torch.equal(before_weights[k], v) for k, v in classifier.state_dict().items())  # f stays frozen


def test_train_mse_then_stability_end_to_end_and_resume(tmp_path):
    clf_path = save_classifier(tmp_path / "clf", _tiny_classifier())
    cfg = DenoiserTrainConfig(dataset="digits", objective="mse+stability", sigma=0.5, classifier=str(clf_path),
                              depth=4, width=8, epochs=2, batch_size=32, train_limit=64, seed=1)
    assert cfg.phase_switch() == 1
    full = train_denoiser(cfg, tmp_path / "full", quiet=True, eval_limit=40)
    info = json.loads((tmp_path / "full.json").read_text())["training"]
    assert info["finished"] is True and info["objective"] == "mse+stability" and info["epochs_done"] == 2
    assert 0 < info["test_mse"] and 0 <= info["denoised_noisy_test_accuracy"] <= 1
    assert info["test_mse_noisy_input"] == pytest.approx(0.25, rel=0.1)  # sigma^2 per pixel
    part = train_denoiser(cfg, tmp_path / "part", quiet=True, eval_limit=40, stop_after=1)
    assert part.info["finished"] is False
    resumed = train_denoiser(cfg, tmp_path / "part", quiet=True, eval_limit=40, resume=True)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_denoiser(tmp_path / "full").config.width == 8


@pytest.mark.parametrize("change,message", [
    (dict(objective="denoise"), "unknown denoiser objective 'denoise'"),
    (dict(arch="memnet"), "unknown denoiser 'memnet'"),
    (dict(sigma=0.0), "--sigma must be a finite noise level > 0"),
    (dict(mse_epochs=1), "--mse-epochs applies to --objective mse\\+stability only"),
])
def test_bad_configs(tmp_path, change, message):
    with pytest.raises(InputError, match=message):
        train_denoiser(DenoiserTrainConfig(dataset="digits", **change), tmp_path / "x", quiet=True)


def test_cli_train_denoiser_and_smoothmix(tmp_path, capsys):
    from diffsmooth.classifiers import load_classifier
    from diffsmooth.cli import main

    clf = save_classifier(tmp_path / "clf", _tiny_classifier())
    assert main(["train-denoiser", "--dataset", "digits", "--sigma", "0.5", "--objective", "mse+stability",
                 "--classifier", str(clf), "--depth", "3", "--width", "8", "--epochs", "2", "--batch-size", "32",
                 "--train-limit", "32", "--eval-limit", "16", "--out", str(tmp_path / "dn"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "test MSE" in out and "classifier accuracy on denoised noisy images" in out
    assert load_denoiser(tmp_path / "dn").training_info["config"]["mse_epochs"] is None
    assert main(["train-classifier", "--dataset", "digits", "--method", "smoothmix", "--sigma", "0.25",
                 "--num-steps", "1", "--step-scale", "1.5", "--epochs", "1", "--batch-size", "32",
                 "--train-limit", "32", "--eval-limit", "16", "--out", str(tmp_path / "sm"), "--quiet"]) == 0
    info = load_classifier(tmp_path / "sm").training_info
    assert info["method"] == "smoothmix" and info["hparams"]["step_scale"] == 1.5 and info["hparams"]["eta"] == 5.0
    assert main(["train-denoiser", "--dataset", "digits", "--sigma", "0.5", "--objective", "l1",
                 "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "unknown denoiser objective 'l1'" in capsys.readouterr().err


def test_train_denoiser_starts_from_a_shipped_denoiser_by_name(tmp_path, capsys):
    """--init and --classifier take what --denoiser / --classifier of certify take: a path, a model's
    saved name without .safetensors, or a shipped model's name."""
    from diffsmooth.cli import main
    from diffsmooth.shipped import shipped_denoiser

    save_classifier(tmp_path / "clf", _tiny_classifier())  # given below by its name, without .safetensors
    assert main(["train-denoiser", "--dataset", "digits", "--sigma", "0.5", "--objective", "stability",
                 "--init", "fmnist_dncnn_0.50", "--classifier", str(tmp_path / "clf"), "--epochs", "1",
                 "--batch-size", "32", "--train-limit", "32", "--eval-limit", "16", "--lr", "1e-12",
                 "--out", str(tmp_path / "dn"), "--quiet"]) == 0
    trained, start = load_denoiser(tmp_path / "dn"), load_denoiser(shipped_denoiser(0.5))
    assert trained.config.depth == start.config.depth == 10
    convs = [k for k, v in start.state_dict().items() if v.ndim == 4]
    # one step of Adam at lr 1e-12 moves each weight by about 1e-12: the shipped weights, not a fresh init
    assert all(torch.allclose(trained.state_dict()[k], start.state_dict()[k], rtol=0, atol=1e-9) for k in convs)
    capsys.readouterr()
    assert main(["train-denoiser", "--dataset", "digits", "--sigma", "0.5", "--init", str(tmp_path / "nothing"),
                 "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--init" in err and "is neither an existing path nor a shipped model" in err and len(err.splitlines()) == 1
    assert not list(tmp_path.glob("bad*"))
