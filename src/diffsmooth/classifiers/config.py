"""``ClassifierConfig``: the data that rebuilds a classifier, saved as JSON beside its weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ClassifierConfig:
    """What ``create_classifier`` needs to rebuild a model, plus input geometry for validation.

    Attributes:
        arch: registry name, e.g. ``"cifar_resnet110"``.
        num_classes: length of the logit vector.
        in_channels, image_size: expected input (B, in_channels, image_size, image_size)
            in [0,1] pixels.
        mean, std: normalization of the first layer (one value per channel).
        dataset: dataset whose statistics were used, if any.
        extra: further keyword arguments of the architecture builder (JSON-serializable).
    """

    arch: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ClassifierConfig":
        return cls(
            arch=str(d["arch"]),
            num_classes=int(d["num_classes"]),
            in_channels=int(d["in_channels"]),
            image_size=int(d["image_size"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            dataset=d.get("dataset"),
            extra=dict(d.get("extra") or {}),
        )
