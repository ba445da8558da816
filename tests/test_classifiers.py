"""Classifier registry, Cohen-format checkpoints and our safetensors+JSON format."""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffsmooth.classifiers import (
    Classifier,
    ClassifierConfig,
    NormalizeLayer,
    create_classifier,
    list_classifiers,
    load_classifier,
    save_classifier,
)
from diffsmooth.validate import InputError

FIXTURES = Path(__file__).parent / "fixtures" / "classifiers"
COHEN_R20 = FIXTURES / "cohen_cifar_resnet20_checkpoint.pth.tar"
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def r20_io() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "cohen_cifar_resnet20_io.safetensors"))


def test_registry_lists_required_architectures():
    names = list_classifiers()
    for required in ("cifar_resnet20", "cifar_resnet110", "resnet50", "beit_large_patch16_224",
                     "vit_base_patch16_224", "fmnist_cnn"):
        assert required in names
    assert names == sorted(names)


def test_unknown_classifier_lists_known_names():
    with pytest.raises(InputError, match="unknown classifier 'resnet51'.*cifar_resnet110.*fmnist_cnn"):
        create_classifier("resnet51")


def test_normalize_layer_hand_computed():
    layer = NormalizeLayer((0.5, 0.25), (0.5, 0.25))
    x = torch.tensor([1.0, 0.0, 0.25, 0.75]).view(1, 2, 1, 2)
    expected = torch.tensor([1.0, -1.0, 0.0, 2.0]).view(1, 2, 1, 2)
    assert torch.equal(layer(x), expected)
    assert list(layer.state_dict()) == []  # Cohen checkpoints have no "0.*" keys


def test_normalization_is_the_first_layer_in_pixel_space():
    torch.manual_seed(0)
    model = create_classifier("cifar_resnet20").eval()
    assert isinstance(model, Classifier) and model.config.mean == CIFAR_MEAN and model.config.std == CIFAR_STD
    x = torch.rand(2, 3, 32, 32)
    by_hand = model.net((x - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(1, 3, 1, 1))
    with torch.no_grad():
        assert rel_l2(model(x), by_hand) < 1e-6


def test_cifar_resnet110_matches_cohen_manifest_key_for_key():
    manifest = json.loads((FIXTURES / "cohen_cifar_resnet110_manifest.json").read_text())
    state = create_classifier("cifar_resnet110").state_dict()
    assert list(state) == list(manifest["state_dict_shapes"])
    assert {k: list(v.shape) for k, v in state.items()} == manifest["state_dict_shapes"]
    model = create_classifier("cifar_resnet110")
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"] == 1_730_714


def test_cohen_resnet20_checkpoint_reproduces_reference_logits(r20_io):
    model = load_classifier(COHEN_R20)
    assert model.config.arch == "cifar_resnet20" and model.config.num_classes == 10
    assert not model.training
    assert model.checkpoint_sha256 == hashlib.sha256(COHEN_R20.read_bytes()).hexdigest()
    assert model.training_info["epoch"] == 90
    with torch.no_grad():
        logits = model(r20_io["input01"])
    assert logits.shape == (4, 10)
    assert rel_l2(logits, r20_io["logits"]) < 1e-4


def _cohen_state() -> dict[str, torch.Tensor]:
    return torch.load(COHEN_R20, map_location="cpu", weights_only=True)["state_dict"]


def test_dataparallel_prefix_loads(tmp_path, r20_io):
    state = {"1.module." + k[2:]: v for k, v in _cohen_state().items()}
    path = tmp_path / "dp.pth.tar"
    torch.save({"arch": "cifar_resnet20", "state_dict": state, "epoch": 3}, path)
    model = load_classifier(path)
    with torch.no_grad():
        assert rel_l2(model(r20_io["input01"]), r20_io["logits"]) < 1e-4


def test_bare_state_dict_needs_arch(tmp_path, r20_io):
    bare = {k[2:]: v for k, v in _cohen_state().items()}  # what net.state_dict() gives
    path = tmp_path / "bare.pth"
    torch.save(bare, path)
    with pytest.raises(InputError, match="pass arch=.*cifar_resnet20"):
        load_classifier(path)
    model = load_classifier(path, arch="cifar_resnet20")
    with torch.no_grad():
        assert rel_l2(model(r20_io["input01"]), r20_io["logits"]) < 1e-4


def test_keys_that_do_not_fit_are_listed():
    with pytest.raises(InputError, match=r"does not fit arch 'cifar_resnet110'.*missing \d+: 1\.layer1\.3\."):
        load_classifier(COHEN_R20, arch="cifar_resnet110")
    with pytest.raises(InputError, match=r"wrong shape.*1\.fc\.weight \(10, 64\) vs \(7, 64\)"):
        load_classifier(COHEN_R20, num_classes=7)


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(InputError, match="not found; check the path"):
        load_classifier(tmp_path / "nope.pth.tar")
    cut = tmp_path / "cut.pth.tar"
    cut.write_bytes(COHEN_R20.read_bytes()[:5000])
    with pytest.raises(InputError, match="damaged or truncated"):
        load_classifier(cut)
    cut_st = tmp_path / "cut.safetensors"
    cut_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(InputError, match="cannot read .* as safetensors"):
        load_classifier(cut_st, arch="fmnist_cnn")


class _Evil:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (exec, (f"open({str(self.target)!r}, 'w').close()",))


def test_malicious_pickle_is_refused_not_executed(tmp_path):
    target = tmp_path / "pwned"
    payload = pickle.dumps({"arch": "cifar_resnet20", "state_dict": _Evil(target)}, protocol=2)
    # Control: the payload really does create the file when unpickled naively.
    pickle.loads(payload)
    assert target.exists()
    target.unlink()

    raw = tmp_path / "evil_raw.pth.tar"
    raw.write_bytes(payload)
    zipped = tmp_path / "evil_zip.pth.tar"
    torch.save({"arch": "cifar_resnet20", "state_dict": _Evil(target)}, zipped)
    for path in (raw, zipped):
        with pytest.raises(InputError, match="refused to load"):
            load_classifier(path)
        assert not target.exists()


def test_own_format_round_trip(tmp_path):
    torch.manual_seed(1)
    model = create_classifier("fmnist_cnn", num_classes=4, dataset="digits", hidden=16)
    with torch.no_grad():  # non-default BatchNorm statistics must survive the trip
        model.net.features[1].running_mean.uniform_(-1, 1)
        model.net.features[1].running_var.uniform_(0.5, 2)
    model.eval()
    weights = save_classifier(tmp_path / "digits_cnn", model, extra={"sigma": 0.25, "epochs": 2})
    assert weights == tmp_path / "digits_cnn.safetensors"
    doc = json.loads((tmp_path / "digits_cnn.json").read_text())
    assert doc["format"] == "diffsmooth-classifier"
    assert (doc["arch"], doc["num_classes"], doc["in_channels"], doc["image_size"]) == ("fmnist_cnn", 4, 1, 8)
    assert doc["mean"] == [0.3053] and doc["training"] == {"epochs": 2, "sigma": 0.25}

    for path in (weights, tmp_path / "digits_cnn.json", tmp_path / "digits_cnn"):
        loaded = load_classifier(path)
        assert loaded.config == model.config
        assert loaded.config.extra == {"hidden": 16}
        assert loaded.training_info == {"sigma": 0.25, "epochs": 2}
        assert loaded.checkpoint_sha256 == doc["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
        x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))


def test_own_format_missing_weights(tmp_path):
    model = create_classifier("fmnist_cnn", dataset="digits")
    weights = save_classifier(tmp_path / "m.safetensors", model)
    weights.unlink()
    with pytest.raises(InputError, match="weights .*m.safetensors .* are missing"):
        load_classifier(tmp_path / "m.json")


def test_config_is_frozen_and_json_ready():
    config = create_classifier("cifar_resnet20").config
    assert isinstance(config, ClassifierConfig)
    with pytest.raises(AttributeError):
        config.num_classes = 3  # type: ignore[misc]
    assert ClassifierConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_fmnist_cnn_size_and_shapes():
    model = create_classifier("fmnist_cnn")
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 468_010 and 300_000 <= n_params <= 1_000_000
    assert model.config.mean == (0.2860,) and model.config.std == (0.3530,)
    assert model(torch.rand(5, 1, 28, 28)).shape == (5, 10)


def test_fmnist_cnn_lite_is_under_10_mflop_and_keeps_the_interface():
    from torch.utils.flop_counter import FlopCounterMode

    assert "fmnist_cnn_lite" in list_classifiers()
    model = create_classifier("fmnist_cnn_lite").eval()
    assert sum(p.numel() for p in model.parameters()) == 435_514
    assert model.config.mean == (0.2860,) and model.config.std == (0.3530,)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        logits = model(torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
    # 16*1*9*784 + 32*16*9*196 + 32*32*9*196 + 64*32*9*49 + 3136*128 + 128*10 multiply-adds, x2
    assert logits.shape == (1, 10) and counter.get_total_flops() == 2 * 4_128_256
    with pytest.raises(InputError, match="fmnist_cnn_lite needs an image size divisible by 4, got 30"):
        create_classifier("fmnist_cnn_lite", image_size=30)


def test_channel_mismatch_is_a_clear_error():
    model = create_classifier("fmnist_cnn")
    with pytest.raises(InputError, match=r"expects images \(B, 1, H, W\), got \(2, 3, 28, 28\)"):
        model(torch.rand(2, 3, 28, 28))


def test_resnet50_uses_imagenet_normalization():
    model = create_classifier("resnet50")
    assert model.config.mean == (0.485, 0.456, 0.406) and model.config.std == (0.229, 0.224, 0.225)
    assert (model.config.num_classes, model.config.image_size) == (1000, 224)
    assert sum(p.numel() for p in model.parameters()) == 25_557_032


def test_timm_vit_is_built_offline_with_half_normalization():
    model = create_classifier("vit_base_patch16_224", num_classes=3, depth=1).eval()
    assert model.config.mean == (0.5, 0.5, 0.5) and model.config.std == (0.5, 0.5, 0.5)
    assert model.config.extra == {"depth": 1}
    with torch.no_grad():
        assert model(torch.rand(1, 3, 224, 224)).shape == (1, 3)
    assert list(model.state_dict())[-1] == "1.head.bias"


def test_missing_timm_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(InputError, match="pip install timm"):
        create_classifier("beit_large_patch16_224")


def test_timm_beit_round_trip_keeps_geometry_and_builder_arguments(tmp_path):
    model = create_classifier("beit_large_patch16_224", num_classes=5, depth=1, image_size=32).eval()
    assert (model.config.image_size, model.config.extra) == (32, {"depth": 1})
    weights = save_classifier(tmp_path / "beit", model)
    loaded = load_classifier(weights)
    assert loaded.config == model.config
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with pytest.raises(InputError, match="describes 'beit_large_patch16_224' with 5 classes"):
        load_classifier(weights, arch="vit_base_patch16_224")
