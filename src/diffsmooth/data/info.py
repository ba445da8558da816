"""What a dataset is, independent of where its files live.

``DatasetInfo`` carries the facts a classifier and a certifier need: class count,
image geometry and the per-channel normalization statistics of [0,1] pixels.
Classifiers read ``mean``/``std`` from here so that one table serves both sides.
Each dataset's info is registered beside its loader (``diffsmooth.data.registry``).
"""

from __future__ import annotations

from dataclasses import dataclass


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
