"""Diffusion purification: DDPM schedules, our ADM UNet, checkpoint loading, one-shot denoising.

DiffSmooth's first stage maps a noisy image ``x + d`` ([0,1] pixels, ``d ~ N(0, sigma^2 I)``)
to a purified image with one call of a pretrained noise-prediction network at the step t*
whose noise level matches ``2 sigma`` in the model's [-1,1] space. ``NoiseSchedule`` gives
``alphas_cumprod``, ``t_star`` and the effective sigma; ``adm_unet`` builds the improved- or
guided-diffusion UNet from the official flags (our own code, checked against the reference
outputs); ``load_diffusion_model`` reads the OpenAI checkpoints by preset
(``improved-cifar10-uncond``, ``guided-imagenet256-uncond``) with ``weights_only`` torch
loading and strict keys, our safetensors+JSON directories (``save_diffusion_model``) and local
diffusers ``UNet2DModel`` folders; ``OneShotDenoiser`` is the purifier as an ``nn.Module``;
``purification_quality`` and ``purification_diagnostic`` measure how well it purifies.
"""

from diffsmooth.diffusion.adm import ADMConfig, ADMUNet, adm_config, adm_unet, known_flags
from diffsmooth.diffusion.checkpoints import load_diffusion_model, save_diffusion_model
from diffsmooth.diffusion.denoiser import MultiStepDenoiser, OneShotDenoiser
from diffsmooth.diffusion.diagnostics import (
    PurificationDiagnostic,
    PurificationQuality,
    diagnose_model,
    purification_diagnostic,
    purification_quality,
)
from diffsmooth.diffusion.presets import (
    DiffusionModel,
    DiffusionPreset,
    build_preset,
    get_preset,
    list_presets,
    preset_state_shapes,
    register_preset,
)
from diffsmooth.diffusion.schedules import NoiseSchedule, list_schedules

__all__ = [
    "ADMConfig",
    "ADMUNet",
    "DiffusionModel",
    "DiffusionPreset",
    "MultiStepDenoiser",
    "NoiseSchedule",
    "OneShotDenoiser",
    "PurificationDiagnostic",
    "PurificationQuality",
    "adm_config",
    "adm_unet",
    "build_preset",
    "diagnose_model",
    "get_preset",
    "known_flags",
    "list_presets",
    "list_schedules",
    "load_diffusion_model",
    "preset_state_shapes",
    "purification_diagnostic",
    "purification_quality",
    "register_preset",
    "save_diffusion_model",
]
