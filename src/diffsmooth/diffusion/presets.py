"""Named diffusion models: the official checkpoints' flags and schedules, and ``DiffusionModel``.

A preset says what builds the network a checkpoint file belongs to (the OpenAI ``.pt`` files
are bare state dicts with no config inside). ``DiffusionModel`` bundles a network with its
schedule and timestep convention; it is what every loader returns and what
``OneShotDenoiser`` consumes.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor, nn

from diffsmooth import validate
from diffsmooth.diffusion.adm import adm_unet
from diffsmooth.diffusion.schedules import NoiseSchedule
from diffsmooth.validate import InputError


@dataclass(frozen=True, eq=False)
class DiffusionModel:
    """A noise-prediction network with the schedule it was trained on.

    Attributes:
        unet: ``unet(x, t) -> (B, C or 2C, H, W)``, x (B, C, H, W) in [-1,1], t (B,) network timesteps.
        schedule: the training schedule (T steps, ``alphas_cumprod``).
        rescale_timesteps: the network takes ``t * 1000 / T`` instead of ``t``
            (improved-diffusion checkpoints).
        in_channels, image_size: native input (the network may run at other sizes).
        name: preset or source name; sha256: hex digest of the weights file (None for random weights).
    """

    unet: nn.Module
    schedule: NoiseSchedule
    rescale_timesteps: bool
    in_channels: int
    image_size: int
    name: str
    sha256: str | None = None

    def network_timesteps(self, t: Tensor) -> Tensor:
        """Schedule steps t (B,) -> the values the network takes (float when rescaled)."""
        return t.float() * (1000.0 / self.schedule.num_timesteps) if self.rescale_timesteps else t


@dataclass(frozen=True, eq=False)
class DiffusionPreset:
    """What builds a known checkpoint: ADM variant + official flags + schedule."""

    name: str
    variant: str
    flags: dict[str, Any]
    schedule: NoiseSchedule
    rescale_timesteps: bool
    checkpoint: str  # file name of the official release, for messages
    description: str = ""
    in_channels: int = field(default=3)

    def build_unet(self) -> nn.Module:
        """The network with fresh random weights (on the current default device)."""
        return adm_unet(self.variant, **self.flags)


_PRESETS: dict[str, DiffusionPreset] = {}


def register_preset(preset: DiffusionPreset) -> DiffusionPreset:
    """Add a preset to the registry (names are unique)."""
    if preset.name in _PRESETS:
        raise InputError(f"diffusion preset {preset.name!r} is already registered; pick another name")
    _PRESETS[preset.name] = preset
    return preset


def list_presets() -> list[str]:
    """Names of the registered diffusion presets."""
    return sorted(_PRESETS)


def get_preset(name: str) -> DiffusionPreset:
    """The preset called ``name``; ``InputError`` listing the known ones otherwise."""
    return _PRESETS[validate.choice(name, "diffusion preset", list_presets())]


@lru_cache(maxsize=None)
def _preset_shapes(name: str) -> dict[str, tuple[int, ...]]:
    # Built on the meta device: key names and shapes without allocating 550M parameters.
    with torch.device("meta"):
        unet = get_preset(name).build_unet()
    return {k: tuple(v.shape) for k, v in unet.state_dict().items()}


def preset_state_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of the preset's network with its shape."""
    return dict(_preset_shapes(name))


def build_preset(name: str, device: torch.device | str | None = None) -> DiffusionModel:
    """A ``DiffusionModel`` of the preset with random weights, in eval mode (tests, FLOP counts;
    ``device="meta"`` builds it without memory)."""
    preset = get_preset(name)
    with torch.device(device) if device is not None else nullcontext():
        unet = preset.build_unet()
    return DiffusionModel(unet.eval(), preset.schedule, preset.rescale_timesteps,
                          preset.in_channels, int(preset.flags["image_size"]), preset.name, None)


register_preset(DiffusionPreset(
    name="improved-cifar10-uncond",
    variant="improved",
    flags={
        "image_size": 32, "num_channels": 128, "num_res_blocks": 3, "num_heads": 4, "num_heads_upsample": -1,
        "attention_resolutions": "16,8", "dropout": 0.3, "learn_sigma": True, "class_cond": False,
        "use_checkpoint": False, "use_scale_shift_norm": True,
    },
    schedule=NoiseSchedule("cosine", 4000),
    rescale_timesteps=True,
    checkpoint="cifar10_uncond_50M_500K.pt",
    description="improved-diffusion CIFAR-10 unconditional (52.5M parameters, 4000-step cosine)",
))

register_preset(DiffusionPreset(
    name="guided-imagenet256-uncond",
    variant="guided",
    flags={
        "image_size": 256, "num_channels": 256, "num_res_blocks": 2, "num_heads": 4, "num_heads_upsample": -1,
        "num_head_channels": 64, "attention_resolutions": "32,16,8", "channel_mult": "", "dropout": 0.0,
        "class_cond": False, "use_checkpoint": False, "use_scale_shift_norm": True, "resblock_updown": True,
        "use_fp16": False, "use_new_attention_order": False, "learn_sigma": True,
    },
    schedule=NoiseSchedule("linear", 1000),
    rescale_timesteps=False,
    checkpoint="256x256_diffusion_uncond.pt",
    description="guided-diffusion ImageNet 256x256 unconditional (552.8M parameters, 1000-step linear)",
))
