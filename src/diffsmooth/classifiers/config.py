"""``ClassifierConfig``: the data that rebuilds a classifier, saved as JSON beside its weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from diffsmooth import validate
from diffsmooth.validate import InputError


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

    def __post_init__(self) -> None:
        validate.whole(self.num_classes, "num_classes", minimum=2)
        validate.whole(self.in_channels, "in_channels")
        validate.whole(self.image_size, "image_size")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise InputError(f"mean and std need one value per channel ({self.in_channels}), "
                             f"got {len(self.mean)} and {len(self.std)}")
        if not all(s > 0 for s in self.std):
            raise InputError(f"std must be positive per channel, got {list(self.std)}")

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
