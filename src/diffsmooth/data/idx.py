"""MNIST-style IDX files (``train-images-idx3-ubyte[.gz]`` ...) parsed with numpy.

IDX layout: two zero bytes, a type code, the number of dimensions d, then d
big-endian uint32 sizes and the row-major data in big-endian order.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from diffsmooth.data.dataset import ArrayImageDataset
from diffsmooth.data.info import DatasetInfo
from diffsmooth.data.locate import find_dir, search_dirs
from diffsmooth.data.registry import register_dataset
from diffsmooth.validate import InputError

_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_PREFIX = {"train": "train", "test": "t10k"}

# Where system packages put the files (Debian: dataset-fashion-mnist).
SYSTEM_DIRS: dict[str, tuple[str, ...]] = {
    "fashion-mnist": ("/usr/share/datasets/fashion-mnist",),
    "mnist": (),
}

_HOW_TO_GET = {
    "fashion-mnist": (
        "run `make data` or `apt-get install dataset-fashion-mnist`, or pass data_dir= a folder "
        "holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        "t10k-labels-idx1-ubyte.gz (or set DIFFSMOOTH_DATA)"
    ),
    "mnist": (
        "download the four MNIST IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) into one folder and pass it as "
        "data_dir= (or set DIFFSMOOTH_DATA)"
    ),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file, gzipped or not (detected from its first bytes).

    Returns an array with the file's shape and dtype (uint8 for images and labels).
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise InputError(f"{path} is a damaged gzip file ({err}); download it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise InputError(f"{path} is not an IDX file (bad magic number); check the file name/download")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise InputError(
            f"{path} holds {len(raw)} bytes but its header {shape} needs {expected}; "
            "the file is truncated, download it again"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_file(folder: Path, stem: str) -> Path | None:
    # Files ship gzipped from the original sites and Debian, raw after manual gunzip;
    # some mirrors write "train-images.idx3-ubyte".
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _stems(split: str) -> tuple[str, str]:
    return f"{_PREFIX[split]}-images-idx3-ubyte", f"{_PREFIX[split]}-labels-idx1-ubyte"


_FASHION_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


# mean/std: the usual published training-set statistics.
@register_dataset(DatasetInfo("fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,), _FASHION_NAMES))
@register_dataset(DatasetInfo("mnist", 10, 1, 28, (0.1307,), (0.3081,), tuple(str(d) for d in range(10))))
def _load_idx_dataset(info: DatasetInfo, split: str, data_dir: Path | None) -> ArrayImageDataset:
    name = info.name
    image_stem, label_stem = _stems(split)
    folder = find_dir(
        name,
        search_dirs(name, data_dir, SYSTEM_DIRS.get(name, ())),
        lambda d: _idx_file(d, image_stem) is not None and _idx_file(d, label_stem) is not None,
        _HOW_TO_GET[name],
    )
    images = read_idx(_idx_file(folder, image_stem))
    labels = read_idx(_idx_file(folder, label_stem))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise InputError(
            f"{folder}: images {images.shape} and labels {labels.shape} do not pair up as "
            "(N,H,W) and (N,); check that both files belong to the same split"
        )
    if images.dtype != np.uint8:
        raise InputError(f"{folder}: {name} images must be unsigned bytes (IDX type 0x08), got {images.dtype}; "
                         "check the files (non-finite or fractional pixels are no dataset images)")
    if images.shape[1:] != (info.image_size, info.image_size):
        raise InputError(
            f"{folder}: {name} images must be {info.image_size}x{info.image_size}, "
            f"got {images.shape[1]}x{images.shape[2]}; check the files"
        )
    return ArrayImageDataset(
        info,
        torch.from_numpy(images.copy()).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        split,
        source=folder,
    )

