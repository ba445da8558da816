"""What a dataset is, independent of where its files live.

``DatasetInfo`` carries the facts a classifier and a certifier need: class count,
image geometry and the per-channel normalization statistics of [0,1] pixels.
Classifiers read ``mean``/``std`` from here so that one table serves both sides.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffsmooth.errors import InputError


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset.

    Attributes:
        name: registry name, e.g. ``"fashion-mnist"``.
        num_classes: number of labels; labels are ints in ``[0, num_classes)``.
        channels: C of the (C, H, W) images.
        image_size: H == W of the images as returned by the dataset.
        mean, std: per-channel statistics of [0,1] pixels (length ``channels``),
            used by the classifier's first layer ``NormalizeLayer``.
        class_names: human-readable names, ``num_classes`` of them when known.
    """

    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()


_FASHION_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_CIFAR10_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
_DIGIT_NAMES = tuple(str(d) for d in range(10))

# mean/std: CIFAR-10 and ImageNet values are the ones of Cohen et al.'s released
# checkpoints (their NormalizeLayer); the grayscale ones are the usual published
# training-set statistics; digits: measured on all 1797 images scaled by 1/16.
_INFOS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,), _FASHION_NAMES),
        DatasetInfo("mnist", 10, 1, 28, (0.1307,), (0.3081,), _DIGIT_NAMES),
        DatasetInfo(
            "cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), _CIFAR10_NAMES
        ),
        DatasetInfo("imagenet", 1000, 3, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        DatasetInfo("digits", 10, 1, 8, (0.3053,), (0.3760,), _DIGIT_NAMES),
    )
}


def known_datasets() -> list[str]:
    """Names that ``dataset_info`` and ``load_dataset`` accept, sorted."""
    return sorted(_INFOS)


def dataset_info(name: str) -> DatasetInfo:
    """The ``DatasetInfo`` of a registered dataset, without touching any file."""
    try:
        return _INFOS[name]
    except KeyError:
        raise InputError(
            f"unknown dataset {name!r}; choose one of: {', '.join(known_datasets())}"
        ) from None
