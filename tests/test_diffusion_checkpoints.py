"""Loading and saving diffusion models: OpenAI state dicts by preset, our format, refusals."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffsmooth.diffusion import (
    NoiseSchedule,
    OneShotDenoiser,
    adm_unet,
    load_diffusion_model,
    preset_state_shapes,
    save_diffusion_model,
)
from diffsmooth.diffusion.checkpoints import file_sha256
from diffsmooth.validate import InputError

FIXTURES = Path(__file__).parent / "fixtures" / "diffusion"


@pytest.fixture(scope="module")
def cifar_checkpoint(tmp_path_factory):
    """A random state dict of the CIFAR-10 preset's manifest shapes, saved as OpenAI do."""
    manifest = json.loads((FIXTURES / "improved_cifar10_uncond_manifest.json").read_text())
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=g) for k, shape in manifest["state_dict_shapes"].items()}
    path = tmp_path_factory.mktemp("openai") / "cifar10_uncond_50M_500K.pt"
    torch.save(state, path)
    return path, state


def test_openai_checkpoint_strict_round_trip(cifar_checkpoint):
    path, state = cifar_checkpoint
    model = load_diffusion_model(path, preset="improved-cifar10-uncond")
    loaded = model.unet.state_dict()
    assert list(loaded) == list(state)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert model.schedule == NoiseSchedule("cosine", 4000) and model.rescale_timesteps
    assert (model.in_channels, model.image_size, model.name) == (3, 32, "improved-cifar10-uncond")
    assert model.sha256 == file_sha256(path) and len(model.sha256) == 64
    assert not model.unet.training


def test_preset_is_detected_from_keys(cifar_checkpoint):
    assert load_diffusion_model(cifar_checkpoint[0]).name == "improved-cifar10-uncond"


def test_other_presets_checkpoint_names_the_fitting_preset(cifar_checkpoint):
    with pytest.raises(InputError, match="fits preset 'improved-cifar10-uncond'") as err:
        load_diffusion_model(cifar_checkpoint[0], preset="guided-imagenet256-uncond")
    assert "missing keys" in str(err.value) and "unexpected keys" in str(err.value)


def test_checkpoint_fitting_no_preset(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"time_embed.0.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(InputError, match="fits no diffusion preset.*known presets"):
        load_diffusion_model(path)
    with pytest.raises(InputError, match="unknown diffusion preset 'cifar'; choose one of: guided"):
        load_diffusion_model(path, preset="cifar")


def test_truncated_file_is_refused(tmp_path):
    full, cut = tmp_path / "full.pt", tmp_path / "cut.pt"
    torch.save({"w": torch.arange(1000.0)}, full)
    cut.write_bytes(full.read_bytes()[:1500])
    with pytest.raises(InputError, match="truncated"):
        load_diffusion_model(cut, preset="improved-cifar10-uncond")


class _Payload:
    """Unpickling this would create a marker file: the loader must refuse, not execute."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('executed')",))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_pickle_is_refused_not_executed(tmp_path, writer):
    import pickle

    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    obj = {"time_embed.0.weight": torch.zeros(1), "x": _Payload(marker)}
    if writer == "torch":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(InputError, match="refused|cannot read"):
        load_diffusion_model(path, preset="improved-cifar10-uncond")
    assert not marker.exists()


def test_missing_path_and_non_state_dict(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_diffusion_model(tmp_path / "nope.pt")
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(InputError, match="not a state dict"):
        load_diffusion_model(path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="neither"):
        load_diffusion_model(tmp_path / "empty")


def test_own_format_round_trip_keeps_reference_outputs(tmp_path):
    config = json.loads((FIXTURES / "guided_small_config.json").read_text())["config"]
    unet = adm_unet("guided", **config)
    unet.load_state_dict(load_file(FIXTURES / "guided_small_weights.safetensors"))
    directory = save_diffusion_model(tmp_path / "guided_small", unet, "guided", config,
                                     NoiseSchedule("linear", 1000), False, extra={"name": "guided-small"})
    doc = json.loads((directory / "config.json").read_text())
    assert doc["format"] == "diffsmooth-diffusion" and doc["schedule"] == {"name": "linear", "num_timesteps": 1000}
    model = load_diffusion_model(directory)
    assert model.name == "guided-small" and model.sha256 == doc["weights_sha256"]
    io = load_file(FIXTURES / "guided_small_io.safetensors")
    with torch.no_grad():
        out = OneShotDenoiser(model, 0.5)(io["denoise.input01"])
    ref = io["denoise.sigma0.5.output01"]
    assert float((out - ref).norm() / ref.norm()) < 1e-4
    # The weights file alone, with its config as a sibling JSON of the same stem, loads too.
    (directory / "config.json").rename(directory / "model.json")
    assert load_diffusion_model(directory / "model.safetensors").sha256 == model.sha256


def test_save_refuses_flags_that_do_not_build_the_unet(tmp_path):
    unet = adm_unet("improved", image_size=32, num_channels=32, num_res_blocks=1)
    with pytest.raises(InputError, match="flags"):
        save_diffusion_model(tmp_path, unet, "improved", {"image_size": 32, "num_channels": 64,
                             "num_res_blocks": 1}, NoiseSchedule("cosine", 4000), True)


def test_bare_safetensors_state_dict_needs_a_fitting_preset(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"a": torch.zeros(2)}, str(path))
    with pytest.raises(InputError, match="fits no diffusion preset"):
        load_diffusion_model(path)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(InputError, match="truncated"):
        load_diffusion_model(path)
    assert "out.2.weight" in preset_state_shapes("improved-cifar10-uncond")
