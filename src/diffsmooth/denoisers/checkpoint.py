"""Reading and writing DnCNN denoisers without executing untrusted code.

Formats read by ``load_denoiser``:
- our own: ``x.safetensors`` (keys ``dncnn.<i>.<name>``) + ``x.json`` (``"format":
  "diffsmooth-denoiser"``, the ``DnCNNConfig``, the weights' SHA-256, training info), written by
  ``save_denoiser``;
- Salman et al.'s (microsoft/denoised-smoothing) ``torch.save({"epoch", "arch", "state_dict",
  "optimizer"})`` with ``arch`` one of ``cifar_dncnn``, ``cifar_dncnn_wide``, ``imagenet_dncnn``
  (the last wrapped in DataParallel: keys ``module.dncnn.<i>.<name>``), or a bare state dict.
Torch files are read with ``torch.load(weights_only=True)``; keys are checked strictly and the
depth, width and channels are read off the weights' shapes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from diffsmooth.denoisers.dncnn import PRESETS, DnCNN, DnCNNConfig
from diffsmooth.errors import InputError
from diffsmooth.files import (check_finite, check_json, few_names, file_sha256, load_state_strictly, read_json_object,
                              read_safetensors, read_torch, save_safetensors, unwrap_state_dict, write_json)

FORMAT = "diffsmooth-denoiser"
FORMAT_VERSION = 1
SALMAN_ARCHS = {"cifar_dncnn": "dncnn", "cifar_dncnn_wide": "dncnn-wide", "imagenet_dncnn": "dncnn"}
"""Salman et al.'s ``arch`` names and our presets they are."""


def _paths(path: Path) -> tuple[Path, Path]:
    """(weights .safetensors, config .json) for any of ``x``, ``x.safetensors``, ``x.json``."""
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def save_denoiser(path: str | Path, model: DnCNN, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as ``<path>.safetensors`` + ``<path>.json``; returns the weights path.

    ``extra``: free-form JSON-serializable training info (objective, sigma, test MSE ...).
    """
    if not isinstance(model, DnCNN):
        raise InputError(f"save_denoiser takes a DnCNN, got {type(model).__name__}")
    weights, config_path = _paths(Path(path))
    weights.parent.mkdir(parents=True, exist_ok=True)
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": "dncnn", **model.config.to_dict(),
           "weights": weights.name, "training": dict(extra or {})}
    check_json(doc, "save_denoiser")
    check_finite(model.state_dict(), weights)
    doc["weights_sha256"] = save_safetensors(weights, model.state_dict(), metadata={"format": FORMAT})
    write_json(config_path, doc)
    return weights


def _config_from_state(state: dict[str, torch.Tensor], path: Path) -> DnCNNConfig:
    """Depth, width and channels of the DnCNN whose weights ``state`` holds."""
    first = state.get("dncnn.0.weight")
    if first is None or first.ndim != 4:
        raise InputError(f"{path} is not a DnCNN state dict (no 'dncnn.0.weight' convolution; "
                         f"keys: {few_names(sorted(state))}); pass a DnCNN checkpoint")
    convs = [k for k, v in state.items() if k.startswith("dncnn.") and k.endswith(".weight") and v.ndim == 4]
    return DnCNNConfig(in_channels=int(first.shape[1]), depth=len(convs), width=int(first.shape[0]))


def _strict_load(model: DnCNN, state: dict[str, torch.Tensor], path: Path) -> None:
    load_state_strictly(model, state, path, f"a DnCNN with depth {model.config.depth}, width {model.config.width}",
                        "the file is not a DnCNN of Salman et al.'s layout")


def _finish(model: DnCNN, path: Path, info: dict[str, Any]) -> DnCNN:
    model.checkpoint_sha256 = file_sha256(path)
    model.checkpoint_path = str(path)
    model.training_info = info
    return model.eval()


def _load_own(weights: Path, config_path: Path) -> DnCNN:
    doc = read_json_object(config_path)
    if doc.get("format") != FORMAT:
        raise InputError(f"{config_path} is not a {FORMAT} config (no \"format\": \"{FORMAT}\"); "
                         "save the denoiser with save_denoiser")
    if not weights.is_file():
        raise InputError(f"weights {weights} for {config_path} are missing; copy them next to the JSON")
    try:
        config = DnCNNConfig.from_dict(doc)
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{config_path} lacks a valid field ({err}); re-save with save_denoiser") from None
    model = DnCNN(config)
    _strict_load(model, read_safetensors(weights), weights)
    return _finish(model, weights, dict(doc.get("training") or {}))


def load_denoiser(path: str | Path) -> DnCNN:
    """Load a DnCNN denoiser (our safetensors + JSON, or Salman et al.'s torch checkpoint) in eval mode.

    Returns a ``DnCNN`` mapping noisy images (B, C, H, W) in [0,1] plus noise to denoised images,
    with ``checkpoint_sha256``/``checkpoint_path`` set. Every problem raises ``InputError``.
    """
    path = Path(path)
    weights, config_path = _paths(path)
    if (path.suffix in (".safetensors", ".json") or not path.exists()) and config_path.is_file():
        return _load_own(weights, config_path)
    if not path.is_file():
        raise InputError(f"denoiser checkpoint {path} not found; check the path")
    if path.suffix == ".safetensors":
        state, arch, meta = read_safetensors(path), None, {}
    else:
        state, arch, meta = unwrap_state_dict(read_torch(path), path)
        check_finite(state, path)
    if arch is not None and arch not in SALMAN_ARCHS:
        raise InputError(f"{path} holds arch {arch!r}, not a DnCNN; known: {', '.join(SALMAN_ARCHS)}")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    config = _config_from_state(state, path)
    if arch is not None and config.width != PRESETS[SALMAN_ARCHS[arch]]["width"]:
        raise InputError(f"{path} says arch {arch!r} but its convolutions have width {config.width}; "
                         "the file is inconsistent, re-save it")
    model = DnCNN(config)
    _strict_load(model, dict(state), path)
    return _finish(model, path, {**meta, **({"arch": arch} if arch else {})})
