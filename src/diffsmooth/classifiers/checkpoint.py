"""Reading and writing classifier checkpoints without executing untrusted code.

Formats read by ``load_classifier``:
- Cohen / SmoothAdv ``.pth.tar``: ``{"arch", "state_dict", "epoch", ...}`` with keys
  ``1.<net key>`` or, for DataParallel models, ``1.module.<net key>``;
- bare timm / torchvision state dicts (``.pth``/``.pt``/``.bin``/``.safetensors``; ``arch`` required);
- our own format: ``x.safetensors`` (full model keys) + ``x.json`` (``ClassifierConfig`` and
  free-form training info), written by ``save_classifier`` through ``diffsmooth.modelfile``;
- a Hugging Face transformers image-classification folder (``classifiers.transformers_models``).
Torch files are read with ``torch.load(weights_only=True)``: pickled code is refused.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from diffsmooth.classifiers.config import ClassifierConfig
from diffsmooth.classifiers.registry import Classifier, create_classifier, head_key, list_classifiers
from diffsmooth.classifiers.transformers_models import ARCH as TRANSFORMERS
from diffsmooth.classifiers.transformers_models import is_transformers_folder, load_transformers_folder
from diffsmooth.files import file_sha256
from diffsmooth.modelfile import ModelFormat, SavedModel, known_keys, load_state_strictly, mark_loaded, read_state_file
from diffsmooth.validate import InputError

MODEL_FILE = ModelFormat(
    "diffsmooth-classifier", "save_classifier",
    required=("arch", "num_classes", "in_channels", "image_size", "mean", "std"),
    known=known_keys([f.name for f in fields(ClassifierConfig)] + ["training"]),
)
"""Our format: the ``ClassifierConfig`` fields and ``"training"`` beside the common keys."""


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
    weights, _ = MODEL_FILE.save(path, model.state_dict(), {**config.to_dict(), "training": dict(extra or {})})
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


def _load_own(saved: SavedModel) -> Classifier:
    config = saved.parse(ClassifierConfig.from_dict)
    try:
        model = create_classifier(
            config.arch, config.num_classes, dataset=config.dataset, mean=config.mean, std=config.std,
            in_channels=config.in_channels, image_size=config.image_size, **config.extra,
        )
    except TypeError as err:
        raise InputError(f"{saved.config} has settings that arch {config.arch!r} does not take ({err}); "
                         "re-save it with save_classifier") from None
    _load_state(model, saved.state, saved.weights)
    return mark_loaded(model, saved.weights, saved.sha256, saved.doc.get("training", {}))


def load_classifier(
    path: str | Path, arch: str | None = None, num_classes: int | None = None
) -> Classifier:
    """Load a classifier checkpoint into a ``Classifier`` in eval mode.

    Args:
        path: a Cohen/SmoothAdv ``.pth.tar``, a bare state dict (``.pth``, ``.pt``,
            ``.bin``, ``.safetensors``), our ``x.safetensors``/``x.json`` pair, or a transformers
            folder (``config.json`` + weights + ``preprocessor_config.json``).
        arch: registry name; required for bare state dicts, overrides a checkpoint's ``arch``.
        num_classes: default: read off the checkpoint's final layer.

    Returns:
        ``Classifier`` (input (B, C, H, W) in [0,1] -> logits) with ``checkpoint_sha256``
        and ``checkpoint_path`` set. Every problem raises ``InputError`` with the fix.
    """
    path = Path(path)
    saved = MODEL_FILE.load(path)
    if saved is not None:
        model = _load_own(saved)
        if arch not in (None, model.config.arch) or num_classes not in (None, model.config.num_classes):
            raise InputError(
                f"{saved.config} describes {model.config.arch!r} with {model.config.num_classes} classes, "
                f"not {arch!r}/{num_classes}; drop arch=/num_classes= for this file"
            )
        return model
    if is_transformers_folder(path):
        if arch not in (None, TRANSFORMERS):
            raise InputError(f"{path} is a transformers folder; its config.json says the architecture, drop arch=")
        return load_transformers_folder(path, num_classes)
    if path.is_dir():
        raise InputError(f"{path} is a folder but not a transformers image-classification folder (config.json "
                         "with model_type); pass a checkpoint file, or the folder save_pretrained wrote")
    state, file_arch, meta = read_state_file(path)
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
    return mark_loaded(model, path, file_sha256(path), meta)
