"""scikit-learn's 8x8 handwritten digits (1797 images, shipped inside scikit-learn).

scikit-learn has no split; we use a fixed, unshuffled one: the first 1437 images
(80%) are "train", the last 360 are "test". Pixel levels 0..16 are scaled by 1/16.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from diffsmooth.data.dataset import ArrayImageDataset
from diffsmooth.data.info import DatasetInfo
from diffsmooth.data.registry import register_dataset
from diffsmooth.validate import InputError

N_TRAIN = 1437


# mean/std: measured on all 1797 images scaled by 1/16.
@register_dataset(DatasetInfo("digits", 10, 1, 8, (0.3053,), (0.3760,), tuple(str(d) for d in range(10))))
def _digits(info: DatasetInfo, split: str, data_dir: Path | None) -> ArrayImageDataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise InputError("the digits dataset needs scikit-learn; run `pip install scikit-learn`") from None
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.uint8)  # levels are integers 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    part = slice(0, N_TRAIN) if split == "train" else slice(N_TRAIN, None)
    return ArrayImageDataset(
        info,
        torch.from_numpy(images[part].copy()).unsqueeze(1),
        torch.from_numpy(labels[part].copy()),
        split,
        max_level=16.0,
    )
