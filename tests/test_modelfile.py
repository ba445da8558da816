"""diffsmooth.modelfile: one save and one load of weights + JSON config for every model family
(classifiers, DnCNN denoisers, diffusion models), and files.atomic_path, the one atomic write.

The fixtures in fixtures/modelfile/ are the JSON files that the code before the shared module
(commit 676e774) wrote for the tiny models built here; a save today must match them byte for
byte, weights SHA-256 included."""

from __future__ import annotations

import errno
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffsmooth.classifiers import create_classifier, load_classifier, save_classifier
from diffsmooth.classifiers.checkpoint import MODEL_FILE as CLASSIFIER_FILE
from diffsmooth.denoisers import create_dncnn, load_denoiser, save_denoiser
from diffsmooth.denoisers.checkpoint import MODEL_FILE as DENOISER_FILE
from diffsmooth.diffusion import NoiseSchedule, adm_unet, load_diffusion_model, save_diffusion_model
from diffsmooth.diffusion.checkpoints import MODEL_FILE as DIFFUSION_FILE
from diffsmooth.files import atomic_path, atomic_write_text, file_sha256, save_safetensors, write_json
from diffsmooth.modelfile import ModelFormat, pair_paths, read_state_file
from diffsmooth.shipped import WEIGHTS_DIR
from diffsmooth.validate import InputError

FIXTURES = Path(__file__).parent / "fixtures" / "modelfile"
ADM_FLAGS = dict(image_size=8, in_channels=1, num_channels=8, num_res_blocks=1, channel_mult="1,2",
                 attention_resolutions="4", num_heads=1, norm_groups=4, learn_sigma=False, dropout=0.0)


def _fill(module: torch.nn.Module) -> torch.nn.Module:
    """Exactly representable weights that depend on nothing but the state-dict layout."""
    with torch.no_grad():
        for i, value in enumerate(module.state_dict().values()):
            if value.is_floating_point():
                value.copy_(((torch.arange(value.numel()) + i) % 7 - 3).float().div(4).view(value.shape))
    return module


def _save_classifier(folder: Path) -> Path:
    model = _fill(create_classifier("fmnist_cnn_lite", num_classes=4, dataset="digits"))
    save_classifier(folder / "classifier", model, {"sigma": 0.25, "epochs": 2, "note": "tiny"})
    return folder / "classifier.json"


def _save_denoiser(folder: Path) -> Path:
    model = _fill(create_dncnn("dncnn", in_channels=1, depth=3, width=4, sigma=0.5, dataset="fashion-mnist"))
    save_denoiser(folder / "denoiser", model, {"objective": "mse", "test_mse": 0.01})
    return folder / "denoiser.json"


def _save_diffusion(folder: Path) -> Path:
    unet = _fill(adm_unet("improved", **ADM_FLAGS))
    save_diffusion_model(folder / "diffusion", unet, "improved", ADM_FLAGS, NoiseSchedule("cosine", 1000), False,
                         {"name": "tiny", "dataset": "fashion-mnist"})
    return folder / "diffusion" / "config.json"


# family: (save -> config path, load, its ModelFormat, the fixture, a shipped JSON of the family)
FAMILIES = {
    "classifier": (_save_classifier, load_classifier, CLASSIFIER_FILE, "classifier.json", "fmnist_cnn_clean.json"),
    "denoiser": (_save_denoiser, load_denoiser, DENOISER_FILE, "denoiser.json", "fmnist_dncnn_0.25.json"),
    "diffusion": (_save_diffusion, load_diffusion_model, DIFFUSION_FILE, "diffusion_config.json",
                  "fmnist_ddpm/config.json"),
}


def _state(model) -> dict[str, torch.Tensor]:
    return (model.unet if hasattr(model, "unet") else model).state_dict()


def _sha(model) -> str:
    return model.sha256 if hasattr(model, "unet") else model.checkpoint_sha256


# ---- the format on disk is unchanged -----------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_a_save_writes_what_the_code_before_the_shared_module_wrote(tmp_path, family):
    save, _, _, fixture, _ = FAMILIES[family]
    config = save(tmp_path)
    assert config.read_bytes() == (FIXTURES / fixture).read_bytes()
    doc = json.loads(config.read_text())
    weights = config.parent / doc["weights"]
    assert doc["weights_sha256"] == file_sha256(weights)
    assert load_file(str(weights)).keys() == _fill_state_keys(family)
    assert sorted(p.name for p in config.parent.iterdir()) == sorted([config.name, weights.name])


def _fill_state_keys(family: str) -> set[str]:
    if family == "classifier":
        return set(create_classifier("fmnist_cnn_lite", num_classes=4, dataset="digits").state_dict())
    if family == "denoiser":
        return set(create_dncnn("dncnn", in_channels=1, depth=3, width=4).state_dict())
    return set(adm_unet("improved", **ADM_FLAGS).state_dict())


@pytest.mark.parametrize("family", FAMILIES)
def test_a_save_has_the_top_level_keys_of_the_shipped_files(tmp_path, family):
    save, _, _, _, shipped = FAMILIES[family]
    assert json.loads(save(tmp_path).read_text()).keys() == json.loads((WEIGHTS_DIR / shipped).read_text()).keys()


def test_every_shipped_model_loads_with_the_sha256_its_json_records():
    configs = sorted(WEIGHTS_DIR.glob("*.json")) + [WEIGHTS_DIR / "fmnist_ddpm" / "config.json"]
    assert len(configs) >= 14
    for config in configs:
        doc = json.loads(config.read_text())
        weights = config.parent / doc["weights"]
        if doc["format"] == "diffsmooth-diffusion":
            sha = load_diffusion_model(config.parent).sha256
        elif doc["format"] == "diffsmooth-denoiser":
            sha = load_denoiser(config.with_suffix("")).checkpoint_sha256
        else:
            sha = load_classifier(weights).checkpoint_sha256
        assert sha == doc["weights_sha256"] == file_sha256(weights), config.name


# ---- round trips ------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_by_every_name_of_the_saved_model(tmp_path, family):
    save, load, _, _, _ = FAMILIES[family]
    config = save(tmp_path)
    doc = json.loads(config.read_text())
    weights = config.parent / doc["weights"]
    names = ([config.parent, weights] if family == "diffusion"
             else [weights, config, config.with_suffix("")])
    expected = load_file(str(weights))
    for name in names:
        model = load(name)
        state = _state(model)
        assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in expected)
        assert _sha(model) == doc["weights_sha256"]
    if family == "classifier":
        assert model.training_info == {"sigma": 0.25, "epochs": 2, "note": "tiny"}
    elif family == "denoiser":
        assert model.config.sigma == 0.5 and model.training_info == {"objective": "mse", "test_mse": 0.01}
    else:
        assert model.name == "tiny" and model.schedule == NoiseSchedule("cosine", 1000) and model.image_size == 8


def test_model_format_paths_for_both_layouts(tmp_path):
    for name in ("m", "m.safetensors", "m.json"):
        assert pair_paths(tmp_path / name) == (tmp_path / "m.safetensors", tmp_path / "m.json")
    assert pair_paths(tmp_path / "m.v2") == (tmp_path / "m.v2.safetensors", tmp_path / "m.v2.json")
    folder = tmp_path / "d"
    assert DIFFUSION_FILE.paths(folder) == (folder / "model.safetensors", folder / "config.json")
    assert DENOISER_FILE.find(tmp_path / "absent") is None
    assert DIFFUSION_FILE.find(tmp_path) is None  # a folder without our config.json is someone else's


# ---- every problem is one InputError naming the file -----------------------------------------------

def _break(config: Path, how: str) -> Path:
    """Damage a saved model; returns the file the message must name."""
    doc = json.loads(config.read_text())
    weights = config.parent / doc["weights"]
    if how == "missing weights":
        weights.unlink()
        return weights
    if how == "wrong format tag":
        config.write_text(json.dumps({**doc, "format": "diffsmooth-something-else"}))
    elif how == "damaged JSON":
        config.write_text(config.read_text()[:40])
    elif how == "NaN weights":
        state = load_file(str(weights))
        key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
        state[key][0] = float("nan")
        save_file(state, str(weights))
        return weights
    return config


@pytest.mark.parametrize("how,message", [
    ("missing weights", "are missing; copy them next to the JSON"),
    ("wrong format tag", "is not a diffsmooth-.* config"),
    ("damaged JSON", "cannot read .* as JSON"),
    ("NaN weights", "holds NaN or infinite weights"),
])
@pytest.mark.parametrize("family", FAMILIES)
def test_a_broken_model_file_is_one_line_naming_the_file(tmp_path, family, how, message):
    save, load, model_file, _, _ = FAMILIES[family]
    config = save(tmp_path)
    named = _break(config, how)
    with pytest.raises(InputError, match=message) as err:
        model_file.read(config)
    assert str(named) in str(err.value) and len(str(err.value).splitlines()) == 1
    if how == "wrong format tag" and family == "diffusion":
        return  # a config.json of another tag is not ours: load_diffusion_model tries diffusers (below)
    with pytest.raises(InputError, match=message) as err:
        load(config.parent if family == "diffusion" else config)
    assert str(named) in str(err.value)


def test_a_diffusion_folder_of_another_format_is_not_taken_for_ours(tmp_path):
    config = _save_diffusion(tmp_path)
    _break(config, "wrong format tag")
    with pytest.raises(InputError, match="is neither a diffsmooth diffusion directory"):
        load_diffusion_model(config.parent)


def test_unknown_and_missing_keys_name_the_file_and_the_saver(tmp_path):
    config = _save_classifier(tmp_path)
    doc = json.loads(config.read_text())
    config.write_text(json.dumps({**doc, "colour": "blue"}))
    with pytest.raises(InputError, match=r"classifier.json has unknown key\(s\) colour; .*save_classifier"):
        load_classifier(config)
    config = _save_diffusion(tmp_path)
    doc = json.loads(config.read_text())
    del doc["schedule"], doc["flags"]
    config.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="config.json lacks flags, schedule; re-save it with save_diffusion_model"):
        load_diffusion_model(config.parent)
    config.write_text(json.dumps({**doc, "flags": 3, "schedule": {"name": "linear", "num_timesteps": 10}}))
    with pytest.raises(InputError, match="config.json has an invalid field"):
        load_diffusion_model(config.parent)


def test_nothing_is_written_for_weights_or_settings_that_cannot_be_saved(tmp_path):
    model_file = ModelFormat("test-format", "save_test")
    state = {"w": torch.tensor([1.0, float("inf")])}
    with pytest.raises(InputError, match=r"m.safetensors holds NaN or infinite weights"):
        model_file.save(tmp_path / "out" / "m", state, {})
    with pytest.raises(InputError, match="save_test: the settings and extra info must be JSON-serializable"):
        model_file.save(tmp_path / "out" / "m", {"w": torch.zeros(2)}, {"training": {"loss": torch.zeros(1)}})
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file; save_diffusion_model writes a folder"):
        DIFFUSION_FILE.save(tmp_path / "file", {"w": torch.zeros(2)}, {})


# ---- foreign torch files: the one read the classifier and denoiser loaders share ---------------------

def test_read_state_file_unwraps_checks_and_refuses(tmp_path):
    state = {"conv.weight": torch.ones(2, 2)}
    torch.save({"arch": "cifar_dncnn", "epoch": 3, "state_dict": state, "optimizer": {}}, tmp_path / "c.pth.tar")
    got, arch, meta = read_state_file(tmp_path / "c.pth.tar")
    assert torch.equal(got["conv.weight"], state["conv.weight"]) and arch == "cifar_dncnn"
    assert meta == {"arch": "cifar_dncnn", "epoch": 3}
    save_file(state, str(tmp_path / "bare.safetensors"))
    assert read_state_file(tmp_path / "bare.safetensors")[1:] == (None, {})
    torch.save({"state_dict": {"w": torch.tensor([float("nan")])}}, tmp_path / "nan.pt")
    with pytest.raises(InputError, match="nan.pt holds NaN or infinite weights"):
        read_state_file(tmp_path / "nan.pt")
    with pytest.raises(InputError, match="denoiser checkpoint .*absent.pt not found; check the path"):
        read_state_file(tmp_path / "absent.pt", "denoiser checkpoint")
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"state_dict": {"w": os.getcwd}}, protocol=2))
    with pytest.raises(InputError, match="refused to load|cannot read"):
        read_state_file(tmp_path / "evil.pt")


# ---- files.atomic_path: the one atomic write ----------------------------------------------------------

def test_a_failure_in_the_block_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "r.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_a_failed_rename_leaves_no_temp_file(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(os, "replace", broken_replace)
    for write in (lambda p: atomic_write_text(p, "x"), lambda p: save_safetensors(p, {"w": torch.zeros(1)})):
        with pytest.raises(OSError):
            write(tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


def _save_figure(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffsmooth.visualize import save_figure

    fig = plt.figure(figsize=(1, 1))
    save_figure(fig, path)
    plt.close(fig)


@pytest.mark.parametrize("write", [
    lambda p: atomic_write_text(p, "new"),
    lambda p: write_json(p, {"new": 1}),
    lambda p: save_safetensors(p, {"w": torch.ones(3)}),
    _save_figure,
], ids=["text", "json", "safetensors", "figure"])
def test_a_symlink_at_the_target_is_replaced_not_written_through(tmp_path, write):
    precious = tmp_path / "precious.png"
    precious.write_text("keep me")
    link = tmp_path / "out.png"
    link.symlink_to(precious)
    stale = tmp_path / "out.png.tmp"  # as if planted, or left by a crash, at the temp path
    stale.symlink_to(precious)
    write(link)
    assert precious.read_text() == "keep me"
    assert not link.is_symlink() and link.stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png", "precious.png"]


def test_figures_keep_their_format_through_the_temp_file(tmp_path):
    _save_figure(tmp_path / "f.pdf")
    _save_figure(tmp_path / "f.png")
    assert (tmp_path / "f.pdf").read_bytes()[:4] == b"%PDF"
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
