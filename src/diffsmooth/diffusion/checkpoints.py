"""Loading and saving diffusion models without executing untrusted code.

``load_diffusion_model(source, preset=None)`` reads:
(a) an OpenAI state-dict file (``.pt``; or ``.safetensors`` of the same keys) for a preset,
    read with ``torch.load(weights_only=True)``, keys checked strictly; without ``preset`` the
    preset whose keys and shapes fit is chosen;
(b) our format, written by ``save_diffusion_model``: a directory with ``config.json``
    (``"format": "diffsmooth-diffusion"``, variant, official flags, schedule,
    rescale_timesteps, extra) and ``model.safetensors``, or ``x.safetensors`` beside ``x.json``;
(c) a diffusers folder (``UNet2DModel`` + ``DDPMScheduler`` config), offline.
Every failure is an ``InputError`` naming the fix. The weights file's SHA-256 is recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffsmooth import validate
from diffsmooth.diffusion.adm import VARIANTS, adm_unet
from diffsmooth.diffusion.presets import DiffusionModel, get_preset, list_presets, preset_state_shapes
from diffsmooth.diffusion.schedules import NoiseSchedule
from diffsmooth.files import file_sha256
from diffsmooth.modelfile import FOLDER_CONFIG, ModelFormat, SavedModel, check_finite, read_safetensors, read_torch
from diffsmooth.validate import InputError

MODEL_FILE = ModelFormat("diffsmooth-diffusion", "save_diffusion_model",
                         required=("variant", "flags", "schedule", "rescale_timesteps"), folder=True)
"""Our format: a folder (``config.json`` + ``model.safetensors``); the JSON holds the ADM variant,
its official flags, the schedule, ``rescale_timesteps`` and ``"extra"`` beside the common keys."""


def save_diffusion_model(directory: str | Path, unet: nn.Module, variant: str, flags: dict[str, Any],
                         schedule: NoiseSchedule, rescale_timesteps: bool,
                         extra: dict[str, Any] | None = None) -> Path:
    """Write ``directory/model.safetensors`` + ``directory/config.json``; returns the directory.

    ``unet`` must be ``adm_unet(variant, **flags)`` (possibly trained): the JSON stores the
    variant, the flags, ``schedule.to_dict()``, ``rescale_timesteps`` and ``extra`` (free-form,
    JSON-serializable training info: dataset, epochs, loss ...), so that the directory says
    what builds it.
    """
    validate.choice(variant, "ADM variant", VARIANTS)
    expected = {k: tuple(v.shape) for k, v in _meta_unet(variant, flags).state_dict().items()}
    actual = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    if expected != actual:
        raise InputError("save_diffusion_model: the unet does not match adm_unet(variant, **flags) "
                         f"({_key_diff(actual, expected)}); pass the flags it was built with")
    fields = {"variant": variant, "flags": dict(flags), "schedule": schedule.to_dict(),
              "rescale_timesteps": bool(rescale_timesteps), "extra": dict(extra or {})}
    weights, _ = MODEL_FILE.save(directory, unet.state_dict(), fields)
    return weights.parent


def load_diffusion_model(source: str | Path, preset: str | None = None) -> DiffusionModel:
    """Load a diffusion model (eval mode, float32 CPU weights) from any supported source.

    Args:
        source: an OpenAI ``.pt`` state dict, our directory / ``.safetensors`` + ``.json``,
            or a diffusers folder (see module docstring).
        preset: for state-dict files, the preset name (``list_presets()``); omitted, the
            preset whose keys and shapes fit is picked.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise InputError(f"diffusion checkpoint {str(source)!r} does not exist; pass a .pt file, a "
                         "diffsmooth model directory or a diffusers folder")
    saved = MODEL_FILE.load(path)
    if saved is not None:
        _no_preset(preset, path, "a diffsmooth model, whose config.json says what builds it")
        return _load_ours(saved)
    if path.is_dir():
        from diffsmooth.diffusion.diffusers_backend import is_diffusers_folder, load_diffusers_model

        if is_diffusers_folder(path):
            _no_preset(preset, path, "a diffusers folder, whose config.json says what builds it")
            return load_diffusers_model(path)
        raise InputError(f"{path} is neither a diffsmooth diffusion directory ({FOLDER_CONFIG} with "
                         f"\"format\": \"{MODEL_FILE.tag}\") nor a diffusers folder "
                         "(config.json + scheduler_config.json)")
    if path.suffix == ".safetensors":
        # No config of ours beside it: a bare state dict, resolved through the presets like a .pt file.
        return _from_state_dict(read_safetensors(path), path, preset)
    return _from_state_dict(_read_torch(path), path, preset)


def _no_preset(preset: str | None, path: Path, what: str) -> None:
    """A preset names the architecture of a bare state dict; given for a model that says its own, it
    would be recorded while changing nothing."""
    if preset is not None:
        raise InputError(f"--denoiser-preset {preset} does not apply to {path}: it is {what}; drop --denoiser-preset")


def _load_ours(saved: SavedModel) -> DiffusionModel:
    flags, schedule = saved.parse(lambda doc: (dict(doc["flags"]), NoiseSchedule.from_dict(dict(doc["schedule"]))))
    unet = _meta_unet(saved.doc["variant"], flags)
    _strict_assign(unet, saved.state, saved.weights)
    return DiffusionModel(
        unet=unet.eval(),
        schedule=schedule,
        rescale_timesteps=bool(saved.doc["rescale_timesteps"]),
        in_channels=int(flags.get("in_channels", 3)),
        image_size=int(flags.get("image_size", 64)),
        name=str(saved.doc.get("extra", {}).get("name", saved.config.parent.name)),
        sha256=saved.sha256,
    )


# ---- OpenAI state dicts -----------------------------------------------------------------------

def _from_state_dict(state: dict[str, Tensor], path: Path, preset: str | None) -> DiffusionModel:
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    fitting = [name for name in list_presets() if preset_state_shapes(name) == shapes]
    if preset is None:
        if not fitting:
            closest = min(list_presets(), key=lambda n: len(set(preset_state_shapes(n)) ^ set(shapes)))
            raise InputError(f"{path.name} fits no diffusion preset (closest {closest!r}: "
                             f"{_key_diff(shapes, preset_state_shapes(closest))}); known presets: "
                             f"{', '.join(list_presets())}; pass a matching checkpoint")
        preset = fitting[0]
    spec = get_preset(preset)
    if preset not in fitting:
        hint = (f"it fits preset {fitting[0]!r}: pass preset={fitting[0]!r}" if fitting
                else f"use the {spec.checkpoint} checkpoint for this preset")
        raise InputError(f"{path.name} does not fit preset {preset!r} "
                         f"({_key_diff(shapes, preset_state_shapes(preset))}); {hint}")
    with torch.device("meta"):
        unet = spec.build_unet()
    _strict_assign(unet, state, path)
    return DiffusionModel(unet.eval(), spec.schedule, spec.rescale_timesteps, spec.in_channels,
                          int(spec.flags["image_size"]), spec.name, file_sha256(path))


# ---- helpers ----------------------------------------------------------------------------------

def _meta_unet(variant: str, flags: dict[str, Any]) -> nn.Module:
    # Meta first, weights assigned after: no time spent on a random init that is overwritten.
    with torch.device("meta"):
        return adm_unet(variant, **flags)


def _strict_assign(unet: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    actual = {k: tuple(v.shape) for k, v in state.items()}
    if expected != actual:
        raise InputError(f"{path.name} does not fit the configured network ({_key_diff(actual, expected)}); "
                         "pass the weights saved together with this config")
    # Half-precision releases are widened: device and dtype then follow the caller's .to().
    unet.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                         strict=True, assign=True)


def _key_diff(actual: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], show: int = 3) -> str:
    missing = sorted(set(expected) - set(actual))
    unexpected = sorted(set(actual) - set(expected))
    reshaped = sorted(k for k in set(actual) & set(expected) if actual[k] != expected[k])
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys, e.g. {', '.join(missing[:show])}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys, e.g. {', '.join(unexpected[:show])}")
    if reshaped:
        parts.append(f"{len(reshaped)} shape mismatches, e.g. "
                     + ", ".join(f"{k} {list(actual[k])} vs {list(expected[k])}" for k in reshaped[:show]))
    return "; ".join(parts) or "no differences"


def _read_torch(path: Path) -> dict[str, Tensor]:
    obj = read_torch(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise InputError(f"{path.name} is not a state dict of tensors; pass the diffusion model's "
                         "state_dict file (e.g. cifar10_uncond_50M_500K.pt)")
    check_finite(obj, path)
    return obj
