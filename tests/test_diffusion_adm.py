"""ADM UNet: equality with the reference networks, official flags, full presets' key layout."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffsmooth.diffusion import (
    ADMConfig,
    ADMUNet,
    adm_config,
    adm_unet,
    build_preset,
    known_flags,
    preset_state_shapes,
)
from diffsmooth.validate import InputError

FIXTURES = Path(__file__).parent / "fixtures" / "diffusion"


def _rel(ours, ref):
    return float((ours - ref).norm() / ref.norm())


def _small(name, variant):
    config = json.loads((FIXTURES / f"{name}_config.json").read_text())["config"]
    unet = adm_unet(variant, **config)
    unet.load_state_dict(load_file(FIXTURES / f"{name}_weights.safetensors"), strict=True)
    return unet.eval(), load_file(FIXTURES / f"{name}_io.safetensors")


@pytest.mark.parametrize("name,variant,prefixes", [
    ("improved_small", "improved", ["unet"]),
    ("guided_small", "guided", ["unet64", "unet48"]),  # 48: non-native size, as 224 on a 256 model
])
def test_unet_matches_reference(name, variant, prefixes):
    unet, io = _small(name, variant)
    with torch.no_grad():
        for p in prefixes:
            out = unet(io[f"{p}.input"], io[f"{p}.timesteps"])
            assert out.shape == io[f"{p}.output"].shape
            assert _rel(out, io[f"{p}.output"]) < 1e-5


def test_new_attention_order_is_a_different_function():
    # The reference small guided model uses the legacy order; flipping the flag must change outputs.
    config = json.loads((FIXTURES / "guided_small_config.json").read_text())["config"]
    unet = adm_unet("guided", **{**config, "use_new_attention_order": True})
    unet.load_state_dict(load_file(FIXTURES / "guided_small_weights.safetensors"), strict=True)
    io = load_file(FIXTURES / "guided_small_io.safetensors")
    with torch.no_grad():
        out = unet.eval()(io["unet48.input"][:1], io["unet48.timesteps"][:1])
    assert _rel(out, io["unet48.output"][:1]) > 1e-2


@pytest.mark.parametrize("preset,manifest", [
    ("improved-cifar10-uncond", "improved_cifar10_uncond_manifest.json"),
    ("guided-imagenet256-uncond", "guided_imagenet256_uncond_manifest.json"),
])
def test_full_presets_match_manifest_keys_and_shapes(preset, manifest):
    doc = json.loads((FIXTURES / manifest).read_text())
    expected = {k: tuple(v) for k, v in doc["state_dict_shapes"].items()}
    shapes = preset_state_shapes(preset)
    assert list(shapes) == list(expected)  # same keys in the same order
    assert shapes == expected
    assert sum(math.prod(s) for s in shapes.values()) == doc["num_params"]
    # The manifest's own flags build the same network.
    variant = preset.split("-")[0]
    with torch.device("meta"):
        from_flags = adm_unet(variant, **doc["config"])
    assert {k: tuple(v.shape) for k, v in from_flags.state_dict().items()} == expected


def test_imagenet_preset_strict_round_trip_on_meta():
    # 552M parameters: meta tensors of the manifest's shapes, assigned through strict loading.
    doc = json.loads((FIXTURES / "guided_imagenet256_uncond_manifest.json").read_text())
    state = {k: torch.empty(v, device="meta") for k, v in doc["state_dict_shapes"].items()}
    unet = build_preset("guided-imagenet256-uncond", device="meta").unet
    result = unet.load_state_dict(state, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    state.pop("out.2.weight")
    with pytest.raises(RuntimeError, match="out.2.weight"):
        unet.load_state_dict(state, strict=True, assign=True)
    # And it runs at 224 (the ImageNet centre crop) on meta.
    out = unet(torch.empty(1, 3, 224, 224, device="meta"), torch.tensor([145], device="meta"))
    assert out.shape == (1, 6, 224, 224)



def test_official_flags_map_one_to_one_onto_a_frozen_config():
    flags = dict(image_size=64, num_channels=64, num_res_blocks=1, num_head_channels=32, attention_resolutions="16,8",
                 learn_sigma=True, resblock_updown=True, use_new_attention_order=True, diffusion_steps=1000)
    config = adm_config("guided", **flags)
    assert config == ADMConfig(in_channels=3, model_channels=64, out_channels=6, num_res_blocks=1, attention_ds=(4, 8),
                               channel_mult=(1, 2, 3, 4), dropout=0.0, num_heads=4, num_head_channels=32,
                               num_heads_upsample=-1, use_scale_shift_norm=True, resblock_updown=True,
                               conv_resample=True, legacy_attention_order=False, num_classes=None, norm_groups=32)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.num_heads = 2  # type: ignore[misc]
    with torch.device("meta"):
        direct, from_flags = ADMUNet(config), adm_unet("guided", **flags)
    assert direct.config == from_flags.config == config
    assert ({k: v.shape for k, v in direct.state_dict().items()}
            == {k: v.shape for k, v in from_flags.state_dict().items()})

def test_grayscale_28px_config_runs():
    unet = adm_unet("improved", image_size=28, in_channels=1, num_channels=32, num_res_blocks=1,
                    channel_mult="1,2,2", attention_resolutions="7", learn_sigma=False, num_heads=2)
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        out = unet.eval()(x, torch.tensor([10, 500]))
    assert out.shape == (2, 1, 28, 28) and torch.isfinite(out).all()


def test_norm_groups_allow_a_narrow_unet_under_100_mflop():
    from torch.utils.flop_counter import FlopCounterMode

    flags = dict(image_size=28, in_channels=1, num_channels=16, num_res_blocks=1, channel_mult="1,2,2",
                 attention_resolutions="7", num_heads=1)
    with pytest.raises(InputError, match="32 groups needs channel counts divisible by 32, got 16"):
        adm_unet("improved", **flags)
    unet = adm_unet("improved", norm_groups=8, **flags).eval()
    norms = [m for m in unet.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and {m.num_groups for m in norms} == {8}
    assert sum(p.numel() for p in unet.parameters()) == 299_937
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        out = unet(torch.zeros(1, 1, 28, 28), torch.tensor([300]))
    assert out.shape == (1, 1, 28, 28) and 90e6 < counter.get_total_flops() <= 100e6
    assert "norm_groups" in known_flags()


def test_unknown_flag_lists_known_ones():
    with pytest.raises(InputError, match="num_head_channels") as err:
        adm_unet("guided", image_size=64, num_chanels=32)
    assert "num_chanels" in str(err.value)
    assert "diffusion_steps" in known_flags() and "in_channels" in known_flags()


@pytest.mark.parametrize("variant,flags,match", [
    ("edm", {}, "choose one of: improved, guided"),
    ("guided", {"image_size": 32}, "channel_mult"),  # guided has no 32px default
    ("improved", {"image_size": 32, "attention_resolutions": "5"}, "attention_resolutions"),
    ("improved", {"image_size": 32, "num_channels": 24}, "divisible by 32"),
])
def test_bad_configs(variant, flags, match):
    with pytest.raises(InputError, match=match):
        adm_unet(variant, **flags)


def test_input_checks():
    with torch.device("meta"):
        unet = adm_unet("improved", image_size=32, num_channels=32, num_res_blocks=1)
    with pytest.raises(InputError, match="channel"):
        unet(torch.empty(1, 1, 32, 32, device="meta"), torch.zeros(1, device="meta"))
    with pytest.raises(InputError, match="divisible by 8"):
        unet(torch.empty(1, 3, 36, 36, device="meta"), torch.zeros(1, device="meta"))
