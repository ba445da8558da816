"""Hugging Face diffusers models (``UNet2DModel`` + ``DDPMScheduler`` config) as ``DiffusionModel``.

Reads a local folder in the layout of ``google/ddpm-cifar10-32``: ``config.json`` +
``diffusion_pytorch_model.safetensors|bin`` + ``scheduler_config.json``, either side by side
or in ``unet/`` and ``scheduler/`` subfolders (pipeline layout). Nothing is downloaded
(``local_files_only``); ``.bin`` weights are read by us with ``torch.load(weights_only=True)`` and
loaded strictly into the network diffusers builds from ``config.json``.
diffusers is optional and imported only here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from diffsmooth.diffusion.presets import DiffusionModel
from diffsmooth.diffusion.schedules import NoiseSchedule
from diffsmooth.files import file_sha256, read_json_object
from diffsmooth.modelfile import load_state_strictly, read_state_file
from diffsmooth.validate import InputError

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
# diffusers' beta_schedule name -> ours; "squaredcos_cap_v2" is the improved-diffusion cosine.
_SCHEDULES = {"linear": "linear", "squaredcos_cap_v2": "cosine"}


class DiffusersUNet(nn.Module):
    """Adapter: ``unet(x, t) -> eps`` (B, C or 2C, H, W) around a diffusers ``UNet2DModel``.

    x (B, C, H, W) in [-1,1]; t (B,) schedule steps (diffusers models take them unscaled).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.model(x, t).sample


def _find(folder: Path, sub: str, name: str) -> Path | None:
    for candidate in (folder / name, folder / sub / name):
        if candidate.is_file():
            return candidate
    return None


def is_diffusers_folder(folder: str | Path) -> bool:
    """True when ``folder`` holds a UNet config and a scheduler config (flat or pipeline layout)."""
    folder = Path(folder)
    return (_find(folder, "unet", "config.json") is not None
            and _find(folder, "scheduler", "scheduler_config.json") is not None)


def schedule_from_scheduler_config(config: dict[str, Any]) -> NoiseSchedule:
    """``NoiseSchedule`` equal to a ``DDPMScheduler`` config (epsilon prediction only)."""
    prediction = config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise InputError(f"scheduler prediction_type {prediction!r} is not supported; one-shot purification "
                         "needs an epsilon-prediction model (prediction_type \"epsilon\")")
    if config.get("trained_betas") is not None:
        raise InputError("schedulers with trained_betas are not supported; use a model with beta_schedule "
                         f"{' or '.join(_SCHEDULES)}")
    kind = config.get("beta_schedule", "linear")
    if kind not in _SCHEDULES:
        raise InputError(f"unsupported diffusers beta_schedule {kind!r}; supported: {', '.join(_SCHEDULES)}")
    steps = int(config.get("num_train_timesteps", 1000))
    if _SCHEDULES[kind] == "linear":
        return NoiseSchedule("linear", steps, float(config.get("beta_start", 1e-4)),
                             float(config.get("beta_end", 0.02)))
    return NoiseSchedule("cosine", steps)


def load_diffusers_model(folder: str | Path) -> DiffusionModel:
    """Load a local diffusers ``UNet2DModel`` folder offline into a ``DiffusionModel`` (eval mode)."""
    folder = Path(folder).expanduser()
    unet_config = _find(folder, "unet", "config.json")
    scheduler_config = _find(folder, "scheduler", "scheduler_config.json")
    if unet_config is None or scheduler_config is None:
        raise InputError(f"{folder} is not a diffusers folder: it needs config.json and scheduler_config.json "
                         "(or unet/ and scheduler/ subfolders), as in google/ddpm-cifar10-32")
    weights = next((p for n in WEIGHT_NAMES if (p := unet_config.parent / n).is_file()), None)
    if weights is None:
        raise InputError(f"no {' or '.join(WEIGHT_NAMES)} in {unet_config.parent}; download the model weights too")
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise InputError("loading a diffusers folder needs the diffusers package; "
                         "run `pip install diffusers`") from None

    schedule = schedule_from_scheduler_config(read_json_object(scheduler_config))
    config = read_json_object(unet_config)
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise InputError(f"{unet_config} describes a {config['_class_name']}; only UNet2DModel "
                         "(unconditional pixel-space DDPM) folders are supported")
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # its warnings are not ours to print
    if weights.suffix == ".bin":
        # A torch file: read weights-only by us (pickled code is refused with our message, never run),
        # then put into the network diffusers builds from config.json.
        state, _, _ = read_state_file(weights, "diffusers weights")
        model = UNet2DModel.from_config(config)
        load_state_strictly(model, state, weights, f"the UNet2DModel of {unet_config}",
                            "the weights do not fit config.json; download the folder again")
    else:
        try:
            model = UNet2DModel.from_pretrained(str(unet_config.parent), local_files_only=True)
        except (OSError, ValueError, RuntimeError, EnvironmentError) as err:
            raise InputError(f"diffusers could not load {unet_config.parent} ({str(err).splitlines()[0][:200]}); "
                             "the weights are truncated or do not fit config.json, download them again") from None
    size = config.get("sample_size", 32)
    return DiffusionModel(
        unet=DiffusersUNet(model).eval(),
        schedule=schedule,
        rescale_timesteps=False,
        in_channels=int(config.get("in_channels", 3)),
        image_size=int(size[0] if isinstance(size, (list, tuple)) else size),
        name=f"diffusers:{folder.name}",
        sha256=file_sha256(weights),
    )


