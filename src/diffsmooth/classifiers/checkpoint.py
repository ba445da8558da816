"""Reading and writing classifier checkpoints without executing untrusted code.

Formats read by ``load_classifier``:
- Cohen / SmoothAdv ``.pth.tar``: ``{"arch", "state_dict", "epoch", ...}`` with keys
  ``1.<net key>`` or, for DataParallel models, ``1.module.<net key>``;
- bare timm / torchvision state dicts (``.pth``/``.pt``/``.bin``/``.safetensors``; ``arch`` required);
- our own format: ``x.safetensors`` (full model keys) + ``x.json`` (``ClassifierConfig`` and
  free-form training info), written by ``save_classifier``.
Torch files are read with ``torch.load(weights_only=True)``: pickled code is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from diffsmooth.classifiers.config import ClassifierConfig
from diffsmooth.classifiers.registry import Classifier, create_classifier, head_key, list_classifiers
from diffsmooth.errors import InputError
from diffsmooth.files import (check_finite, check_json, file_sha256, load_state_strictly, read_safetensors, read_torch,
                              save_safetensors, unwrap_state_dict, write_json)

FORMAT = "diffsmooth-classifier"
FORMAT_VERSION = 1
_KNOWN_KEYS = {"format", "format_version", "arch", "num_classes", "in_channels", "image_size", "mean", "std",
               "dataset", "extra", "weights", "weights_sha256", "training"}


def _paths(path: Path) -> tuple[Path, Path]:
    """(weights .safetensors, config .json) for any of ``x``, ``x.safetensors``, ``x.json``."""
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def save_classifier(path: str | Path, model: Classifier, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as ``<path>.safetensors`` + ``<path>.json``; returns the weights path.

    The JSON holds ``"format": "diffsmooth-classifier"``, the ``ClassifierConfig`` fields
    (arch, num_classes, in_channels, image_size, mean, std, dataset, extra), the weights'
    SHA-256 and ``"training"``: ``extra`` (free-form, JSON-serializable: sigma, epochs, accuracy ...).
    """
    config = getattr(model, "config", None)
    if not isinstance(config, ClassifierConfig):
        raise InputError("save_classifier needs a model made by create_classifier or load_classifier "
                         "(it has no ClassifierConfig in .config)")
    weights, config_path = _paths(Path(path))
    weights.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **config.to_dict(),
        "weights": weights.name,
        "training": dict(extra or {}),
    }
    check_json(doc, "save_classifier")
    check_finite(model.state_dict(), weights)
    doc["weights_sha256"] = save_safetensors(weights, model.state_dict(), metadata={"format": FORMAT})
    write_json(config_path, doc)
    return weights


def _to_model_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map checkpoint keys onto ``Classifier`` keys ``1.<net key>``."""
    keys = list(state)
    if all(k.startswith("1.module.") for k in keys):  # Sequential(normalize, DataParallel(net))
        return {"1." + k[len("1.module."):]: v for k, v in state.items()}
    if all(k.startswith("1.") for k in keys):  # Cohen: Sequential(normalize, net)
        return dict(state)
    if all(k.startswith("module.") for k in keys):  # DataParallel(net)
        return {"1." + k[len("module."):]: v for k, v in state.items()}
    return {"1." + k: v for k, v in state.items()}  # bare timm/torchvision state dict


def _load_state(model: Classifier, state: dict[str, torch.Tensor], path: Path) -> None:
    load_state_strictly(model, state, path, f"arch {model.config.arch!r} with {model.config.num_classes} classes",
                        "pass the arch/num_classes the checkpoint was trained with "
                        f"(known: {', '.join(list_classifiers())})")


def _finish(model: Classifier, path: Path) -> Classifier:
    model.checkpoint_sha256 = file_sha256(path)
    model.checkpoint_path = str(path)
    return model.eval()


def _load_own(weights: Path, config_path: Path) -> Classifier:
    try:
        doc = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read classifier config {config_path} ({err}); fix or re-save it") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(f"{config_path} is not a {FORMAT} config (no \"format\": \"{FORMAT}\"); "
                         "save the model with save_classifier")
    if not weights.is_file():
        raise InputError(f"weights {weights} for {config_path} are missing; copy them next to the JSON")
    unknown = sorted(set(doc) - _KNOWN_KEYS)
    if unknown:
        raise InputError(f"{config_path} has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN_KEYS))}; "
                         "fix the file or re-save it with save_classifier")
    try:
        config = ClassifierConfig.from_dict(doc)
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{config_path} lacks a valid field ({err}); re-save with save_classifier") from None
    try:
        model = create_classifier(
            config.arch, config.num_classes, dataset=config.dataset, mean=config.mean, std=config.std,
            in_channels=config.in_channels, image_size=config.image_size, **config.extra,
        )
    except TypeError as err:
        raise InputError(f"{config_path} has settings that arch {config.arch!r} does not take ({err}); "
                         "re-save it with save_classifier") from None
    _load_state(model, read_safetensors(weights), weights)
    model.training_info = doc.get("training", {})
    return _finish(model, weights)


def load_classifier(
    path: str | Path, arch: str | None = None, num_classes: int | None = None
) -> Classifier:
    """Load a classifier checkpoint into a ``Classifier`` in eval mode.

    Args:
        path: a Cohen/SmoothAdv ``.pth.tar``, a bare state dict (``.pth``, ``.pt``,
            ``.bin``, ``.safetensors``) or our ``x.safetensors``/``x.json`` pair.
        arch: registry name; required for bare state dicts, overrides a checkpoint's ``arch``.
        num_classes: default: read off the checkpoint's final layer.

    Returns:
        ``Classifier`` (input (B, C, H, W) in [0,1] -> logits) with ``checkpoint_sha256``
        and ``checkpoint_path`` set. Every problem raises ``InputError`` with the fix.
    """
    path = Path(path)
    weights, config_path = _paths(path)
    own = path.suffix in (".safetensors", ".json") or not path.exists()
    if own and config_path.is_file():
        model = _load_own(weights, config_path)
        if arch not in (None, model.config.arch) or num_classes not in (None, model.config.num_classes):
            raise InputError(
                f"{config_path} describes {model.config.arch!r} with {model.config.num_classes} classes, "
                f"not {arch!r}/{num_classes}; drop arch=/num_classes= for this file"
            )
        return model
    if not path.is_file():
        raise InputError(f"checkpoint {path} not found; check the path")
    if path.suffix == ".safetensors":
        state, file_arch, meta = read_safetensors(path), None, {}
    else:
        state, file_arch, meta = unwrap_state_dict(read_torch(path), path)
        check_finite(state, path)
    arch = arch or file_arch
    if arch is None:
        raise InputError(f"{path} does not say its architecture; pass arch= one of: "
                         f"{', '.join(list_classifiers())}")
    state = _to_model_keys(state)
    if num_classes is None:
        head = state.get("1." + head_key(arch))
        num_classes = int(head.shape[0]) if head is not None and head.ndim == 2 else None
    model = create_classifier(arch, num_classes)
    _load_state(model, state, path)
    model.training_info = meta
    return _finish(model, path)
