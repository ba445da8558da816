"""Hugging Face transformers image classifiers, read from a local folder without running its code.

A folder as ``save_pretrained`` writes it: ``config.json`` (``model_type``, ``id2label``,
``num_channels``, ``image_size``), the weights (``model.safetensors``, or a ``pytorch_model.bin``
that ``torch.load(weights_only=True)`` accepts) and ``preprocessor_config.json`` (``size`` or
``crop_size``, ``image_mean``, ``image_std``). Any architecture that
``AutoModelForImageClassification`` builds is accepted (ViT, BEiT, ConvNeXt, ResNet, Swin ...).

The weights are read here through ``diffsmooth.modelfile`` (safetensors, or ``torch.load`` with
``weights_only=True``: pickled code is refused); transformers builds the network from the config and
places those tensors (``from_pretrained(None, state_dict=...)``: it reads no file, downloads nothing and
runs no custom code), strictly: missing, unexpected or mis-shaped keys are refused. The model
becomes a ``Classifier``: ``NormalizeLayer`` with the processor's mean/std, then ``TransformersNet``,
which resizes the normalized image to the model's input size with bicubic, antialiased
interpolation (as DDS feeds its CIFAR-10 ViT, ethz-spylab ``cifar10/DRM.py``) and returns the
logits. Resizing commutes with the per-channel normalization, so this equals resizing the [0,1]
image first. The processor's own resampling filter, centre crop and ``crop_pct`` are not applied:
the whole image is resized, as DDS does.

transformers is optional: ``pip install 'diffsmooth[hub]'``.
"""

from __future__ import annotations

import math

from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffsmooth.classifiers.config import ClassifierConfig
from diffsmooth.classifiers.normalize import NormalizeLayer
from diffsmooth.classifiers.registry import Classifier, register_classifier
from diffsmooth.files import file_sha256, read_json_object
from diffsmooth.modelfile import few_names, mark_loaded, read_state_file
from diffsmooth.validate import InputError

ARCH = "transformers"
"""Registry name of every transformers classifier; ``config.extra["hf_config"]`` says which network."""
CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
"""Weight files read, in order of preference (safetensors first)."""
INSTALL = "pip install 'diffsmooth[hub]'"


def _transformers():
    try:
        import transformers
    except ImportError:
        raise InputError(f"transformers image classifiers need the transformers package; run `{INSTALL}`") from None
    return transformers


def is_transformers_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder whose ``config.json`` names a transformers ``model_type``
    (not one of our model folders, which carry ``"format"``, nor a diffusers folder)."""
    path = Path(path)
    if not (path / CONFIG).is_file():
        return False
    doc = read_json_object(path / CONFIG)
    return isinstance(doc.get("model_type"), str) and "format" not in doc and "_class_name" not in doc


class TransformersNet(nn.Module):
    """A transformers image classifier behind a resize: normalized images (B, C, H, W) ->
    bicubic, antialiased resize to ``input_size`` (skipped at that size) -> logits (B, num_labels)."""

    def __init__(self, model: nn.Module, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.model = model
        self.input_size = (int(input_size[0]), int(input_size[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bicubic", antialias=True, align_corners=False)
        return self.model(pixel_values=x).logits


def _hf_config(doc: dict[str, Any], where: str):
    """The transformers config of ``doc`` (a ``config.json``), refused unless
    ``AutoModelForImageClassification`` builds it from the library's own code."""
    transformers = _transformers()
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES as KNOWN

    model_type = doc.get("model_type")
    if model_type not in KNOWN:
        raise InputError(f"{where}: model_type {model_type!r} is not an image classifier that transformers "
                         f"{transformers.__version__} builds (custom code is never run); "
                         f"known: {', '.join(sorted(KNOWN))}")
    try:
        return transformers.AutoConfig.for_model(**doc)
    except (TypeError, ValueError, KeyError) as err:
        raise InputError(f"{where} is not a valid {model_type} config ({str(err).splitlines()[0][:160]}); "
                         "save the model again with save_pretrained") from None


@register_classifier(ARCH, dataset="imagenet", head_key="classifier.weight")
def build(num_classes: int, in_channels: int, image_size: int, hf_config: dict[str, Any] | None = None,
          **kwargs: Any) -> nn.Module:
    """``TransformersNet`` of the network ``hf_config`` (a ``config.json`` as a dict) describes, freshly
    initialized; input resized to ``image_size``. ``num_classes`` and ``in_channels`` must agree with it."""
    if hf_config is None or kwargs:
        raise InputError(f"arch {ARCH!r} is built from a transformers folder; pass the folder to load_classifier")
    config = _hf_config(hf_config, "hf_config")
    if (config.num_labels, getattr(config, "num_channels", 3)) != (num_classes, in_channels):
        raise InputError(f"hf_config describes {config.num_labels} labels and {getattr(config, 'num_channels', 3)} "
                         f"channels, not {num_classes} and {in_channels}")
    from transformers import AutoModelForImageClassification

    return TransformersNet(AutoModelForImageClassification.from_config(config), (image_size, image_size))


def _input_size(processor: dict[str, Any], doc: dict[str, Any], where: Path) -> int:
    """The square input size: the processor's crop (when it crops), else its size, else the config's."""
    size = processor.get("crop_size") if processor.get("do_center_crop") else None
    size = size or processor.get("size") or doc.get("image_size")
    if isinstance(size, dict):
        h, w = size.get("height"), size.get("width")
        size = size.get("shortest_edge") if h is None else h
        if w is not None and w != size:
            raise InputError(f"{where} asks for a {h}x{w} input; only square inputs are supported")
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise InputError(f"{where} gives no usable input size ({size!r}); it needs \"size\": "
                         "{\"height\": H, \"width\": H} (or \"image_size\" in config.json)")
    return size


def _statistics(processor: dict[str, Any], channels: int, where: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel of the processor's normalization (0/1 when it does not normalize)."""
    if processor.get("do_normalize", True) is False:
        return (0.0,) * channels, (1.0,) * channels
    mean, std = processor.get("image_mean"), processor.get("image_std")
    if not isinstance(mean, list) or not isinstance(std, list):
        raise InputError(f"{where} lacks image_mean/image_std; copy the model's preprocessor_config.json beside it")
    if len(mean) == 1 and len(std) == 1:
        mean, std = mean * channels, std * channels
    if len(mean) != channels or len(std) != channels:
        raise InputError(f"{where} gives {len(mean)}/{len(std)} mean/std values for a {channels}-channel model; "
                         "give one per channel")
    try:
        mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    except (TypeError, ValueError):
        raise InputError(f"{where}: image_mean / image_std must be numbers, got {mean} / {std}; fix the file") from None
    if not all(math.isfinite(v) for v in mean) or not all(math.isfinite(v) and v > 0 for v in std):
        raise InputError(f"{where}: image_std must be finite and > 0 per channel and image_mean finite, got "
                         f"mean {list(mean)}, std {list(std)}; fix the file (or copy the model's own)")
    return mean, std


def _weights(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The folder's state dict (safetensors preferred; a .bin only weights-only, all finite) and its file."""
    for name in WEIGHTS:
        if (folder / name).is_file():
            return read_state_file(folder / name, "transformers weights")[0], folder / name
    if any(folder.glob("*.index.json")):
        raise InputError(f"{folder} holds sharded weights; merge them into one model.safetensors "
                         "(model.save_pretrained(folder, max_shard_size='100GB'))")
    raise InputError(f"{folder} has no {' or '.join(WEIGHTS)}; copy the model's weights into the folder")


def labels(model: Classifier) -> list[str]:
    """The class names of a transformers classifier (its ``id2label``), by index."""
    id2label = model.config.extra["hf_config"].get("id2label") or {}
    return [str(id2label.get(str(i), id2label.get(i, i))) for i in range(model.config.num_classes)]


@contextmanager
def _quiet():
    """transformers without its loading report and progress bar (restored afterwards)."""
    from transformers.utils import logging

    verbosity, bar = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bar:
            logging.enable_progress_bar()


def _pretrained(config: Any, state: dict[str, torch.Tensor], weights: Path) -> nn.Module:
    """The network of ``config`` holding ``state``, float32, eval mode. transformers places the tensors
    (renaming the keys that older versions wrote) from memory: it reads no file and downloads nothing.
    Missing, unexpected or mis-shaped keys are refused."""
    from transformers import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING

    model_class = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING[type(config)]
    try:
        with _quiet():
            model, report = model_class.from_pretrained(
                None, config=config, state_dict=state, dtype=torch.float32, local_files_only=True,
                ignore_mismatched_sizes=True, output_loading_info=True)
    except (RuntimeError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise InputError(f"transformers could not place the weights of {weights} into the {model_class.__name__} "
                         f"of {weights.parent / CONFIG} ({first}); the weights and config.json must come from one "
                         "model") from None
    parts = [f"{what} {len(keys)}: {few_names(sorted(map(str, keys)))}" for what, keys in
             (("missing", report["missing_keys"]), ("unexpected", report["unexpected_keys"]),
              ("wrong shape", [k[0] if isinstance(k, tuple) else k for k in report["mismatched_keys"]]),
              ("errors", report["error_msgs"])) if keys]
    if parts:
        raise InputError(f"{weights} does not fit the {model_class.__name__} that {weights.parent / CONFIG} "
                         f"describes ({'; '.join(parts)}); the weights and config.json must come from one model")
    return model.eval()


def load_transformers_folder(folder: str | Path, num_classes: int | None = None) -> Classifier:
    """A transformers image-classification folder as a ``Classifier`` in eval mode: (B, C, H, W)
    images in [0,1] -> logits (B, num_labels); any H, W (resized to the model's input size).

    ``num_classes``, when given, must equal the folder's label count. ``checkpoint_path`` and
    ``checkpoint_sha256`` name the weights file, ``training_info`` the model type and architecture;
    ``labels(model)`` gives the class names. Every problem (transformers missing, an architecture it does
    not build, pickled code in the weights, keys that do not fit) is an ``InputError`` with the fix."""
    folder = Path(folder)
    doc = read_json_object(folder / CONFIG)
    config = _hf_config(doc, str(folder / CONFIG))
    if num_classes is not None and num_classes != config.num_labels:
        raise InputError(f"{folder} classifies {config.num_labels} labels (id2label in config.json), not "
                         f"{num_classes}; use a model fine-tuned for these classes")
    if not (folder / PREPROCESSOR).is_file():
        raise InputError(f"{folder} lacks {PREPROCESSOR} (input size, mean, std); copy it from the model's folder")
    processor = read_json_object(folder / PREPROCESSOR)
    channels = int(getattr(config, "num_channels", 3))
    size = _input_size(processor, doc, folder / PREPROCESSOR)
    mean, std = _statistics(processor, channels, folder / PREPROCESSOR)
    state, weights = _weights(folder)
    net = TransformersNet(_pretrained(config, state, weights), (size, size))
    settings = ClassifierConfig(ARCH, config.num_labels, channels, size, mean, std, None,
                                {"hf_config": config.to_dict()})
    info = {"model_type": config.model_type, "architecture": type(net.model).__name__, "folder": str(folder)}
    return mark_loaded(Classifier(NormalizeLayer(mean, std), net, settings), weights, file_sha256(weights), info)
