"""Reading and writing DnCNN denoisers without executing untrusted code.

Formats read by ``load_denoiser``:
- our own: ``x.safetensors`` (keys ``dncnn.<i>.<name>``) + ``x.json`` (``"format":
  "diffsmooth-denoiser"``, the ``DnCNNConfig``, the weights' SHA-256, training info), written by
  ``save_denoiser`` through ``diffsmooth.modelfile``;
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
from diffsmooth.files import file_sha256
from diffsmooth.modelfile import ModelFormat, few_names, load_state_strictly, mark_loaded, read_state_file
from diffsmooth.validate import InputError

MODEL_FILE = ModelFormat("diffsmooth-denoiser", "save_denoiser", required=("in_channels", "depth", "width"))
"""Our format: ``"arch": "dncnn"``, the ``DnCNNConfig`` fields and ``"training"`` beside the common keys."""
SALMAN_ARCHS = {"cifar_dncnn": "dncnn", "cifar_dncnn_wide": "dncnn-wide", "imagenet_dncnn": "dncnn"}
"""Salman et al.'s ``arch`` names and our presets they are."""


def save_denoiser(path: str | Path, model: DnCNN, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as ``<path>.safetensors`` + ``<path>.json``; returns the weights path.

    ``extra``: free-form JSON-serializable training info (objective, sigma, test MSE ...).
    """
    if not isinstance(model, DnCNN):
        raise InputError(f"save_denoiser takes a DnCNN, got {type(model).__name__}")
    fields = {"arch": "dncnn", **model.config.to_dict(), "training": dict(extra or {})}
    weights, _ = MODEL_FILE.save(path, model.state_dict(), fields)
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


def load_denoiser(path: str | Path) -> DnCNN:
    """Load a DnCNN denoiser (our safetensors + JSON, or Salman et al.'s torch checkpoint) in eval mode.

    Returns a ``DnCNN`` mapping noisy images (B, C, H, W) in [0,1] plus noise to denoised images,
    with ``checkpoint_sha256``/``checkpoint_path`` set. Every problem raises ``InputError``.
    """
    path = Path(path)
    saved = MODEL_FILE.load(path)
    if saved is not None:
        model = DnCNN(saved.parse(DnCNNConfig.from_dict))
        _strict_load(model, saved.state, saved.weights)
        return mark_loaded(model, saved.weights, saved.sha256, dict(saved.doc.get("training") or {}))
    state, arch, meta = read_state_file(path, "denoiser checkpoint")
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
    return mark_loaded(model, path, file_sha256(path), {**meta, **({"arch": arch} if arch else {})})
