"""Classifiers by name (timm's ``register_model``/``create_model`` pattern).

``create_classifier(name, num_classes)`` returns a ``Classifier``: an
``nn.Sequential(NormalizeLayer, net)`` so that state-dict keys start with ``1.``
exactly as in Cohen et al.'s checkpoints, carrying its ``ClassifierConfig``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from diffsmooth import validate
from diffsmooth.classifiers.config import ClassifierConfig
from diffsmooth.classifiers.normalize import NormalizeLayer
from diffsmooth.data import dataset_info
from diffsmooth.validate import InputError

# builder(num_classes, in_channels, image_size, **kwargs) -> bare network (normalized input -> logits)
Builder = Callable[..., nn.Module]


class Classifier(nn.Sequential):
    """``normalize`` (child 0) then ``net`` (child 1); (B, C, H, W) in [0,1] -> logits (B, num_classes).

    Attributes:
        config: the ``ClassifierConfig`` that rebuilds this model.
        checkpoint_sha256: SHA-256 of the file it was loaded from (None if created fresh).
        checkpoint_path: that file's path as a string (None if created fresh).
        training_info: free-form metadata from the checkpoint (epoch, sigma ...), {} if none.
    """

    def __init__(self, normalize: NormalizeLayer, net: nn.Module, config: ClassifierConfig):
        super().__init__(normalize, net)
        self.config = config
        self.checkpoint_sha256: str | None = None
        self.checkpoint_path: str | None = None
        self.training_info: dict[str, Any] = {}

    @property
    def normalize(self) -> NormalizeLayer:
        return self[0]

    @property
    def net(self) -> nn.Module:
        return self[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise InputError(
                f"{self.config.arch} expects images (B, {self.config.in_channels}, H, W), got "
                f"{tuple(x.shape)}; convert the images to {self.config.in_channels} channel(s) "
                "or pick a classifier for this data"
            )
        return super().forward(x)


@dataclass(frozen=True)
class _Entry:
    build: Builder
    dataset: str
    num_classes: int | None
    in_channels: int | None
    image_size: int | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    head_key: str


_REGISTRY: dict[str, _Entry] = {}


def register_classifier(
    name: str,
    *,
    dataset: str,
    num_classes: int | None = None,
    in_channels: int | None = None,
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    head_key: str = "fc.weight",
) -> Callable[[Builder], Builder]:
    """Register ``builder(num_classes, in_channels, image_size, **kwargs) -> nn.Module``.

    ``dataset`` gives the default normalization statistics and geometry; ``mean``/``std``
    override the statistics (e.g. 0.5/0.5 for BEiT/ViT). ``head_key`` names the
    final weight in the bare net's state dict, whose first dimension is the class count
    (used to infer ``num_classes`` from a checkpoint).
    """

    def decorate(build: Builder) -> Builder:
        _REGISTRY[name] = _Entry(
            build, dataset, num_classes, in_channels, image_size,
            tuple(mean) if mean is not None else None,
            tuple(std) if std is not None else None,
            head_key,
        )
        return build

    return decorate


def list_classifiers() -> list[str]:
    """Registered architecture names, sorted."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    return _REGISTRY[validate.choice(name, "classifier", list_classifiers())]


def head_key(name: str) -> str:
    """State-dict key (without the ``1.`` prefix) of ``name``'s final weight."""
    return _entry(name).head_key


def create_classifier(name: str, num_classes: int | None = None, **kwargs: Any) -> Classifier:
    """Build a freshly initialized classifier (never downloads pretrained weights).

    Args:
        name: a name from ``list_classifiers()``.
        num_classes: logit count; default: the architecture's or its dataset's.
        **kwargs: ``dataset=`` (statistics and geometry from that dataset), ``mean=``,
            ``std=``, ``in_channels=``, ``image_size=``; anything else goes to the
            architecture builder (e.g. ``depth=1`` for a timm ViT) and is kept in
            ``config.extra``.

    Returns:
        ``Classifier`` mapping (B, C, H, W) in [0,1] to logits (B, num_classes), in train mode.
    """
    entry = _entry(name)
    dataset = kwargs.pop("dataset", None) or entry.dataset
    info = dataset_info(dataset)
    mean = tuple(kwargs.pop("mean", None) or entry.mean or info.mean)
    std = tuple(kwargs.pop("std", None) or entry.std or info.std)
    in_channels = int(kwargs.pop("in_channels", None) or entry.in_channels or info.channels)
    image_size = int(kwargs.pop("image_size", None) or entry.image_size or info.image_size)
    num_classes = int(num_classes or entry.num_classes or info.num_classes)
    if len(mean) != in_channels or len(std) != in_channels:
        if len(mean) == 1 and len(std) == 1:
            mean, std = mean * in_channels, std * in_channels
        else:
            raise InputError(
                f"{name}: mean/std have {len(mean)}/{len(std)} values for {in_channels} input "
                "channels; give one value per channel"
            )
    net = entry.build(num_classes, in_channels, image_size, **kwargs)
    config = ClassifierConfig(name, num_classes, in_channels, image_size, mean, std, dataset, dict(kwargs))
    return Classifier(NormalizeLayer(mean, std), net, config)
