"""CIFAR-10 from the official ``cifar-10-batches-py`` folder.

The batches are Python pickles. Pickles can run arbitrary code when loaded, so
they are read with an unpickler that resolves only the few globals numpy needs
to rebuild an array; anything else is refused before it can execute.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from diffsmooth.data.dataset import ArrayImageDataset
from diffsmooth.data.info import DatasetInfo
from diffsmooth.data.locate import find_dir, search_dirs
from diffsmooth.data.registry import register_dataset
from diffsmooth.validate import InputError

_FOLDER = "cifar-10-batches-py"
_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_HOW_TO_GET = (
    "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, unpack it "
    "and pass data_dir= the folder containing cifar-10-batches-py (or set DIFFSMOOTH_DATA)"
)

# numpy's own array rebuild functions, taken from an array rather than imported by name:
# _reconstruct for pickle protocols <= 4, _frombuffer for protocol 5 (out-of-band buffers).
_reconstruct = np.zeros(1).__reduce__()[0]
_frombuffer = np.zeros(1).__reduce_ex__(5)[0]
_ALLOWED = {
    # numpy 1.x pickles name numpy.core, numpy 2.x numpy._core; both mean the same function.
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Python 3 writes bytes as _codecs.encode(str, "latin1") under pickle protocol 2.
    ("_codecs", "encode"): __import__("codecs").encode,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def load_pickle_batch(path: str | Path) -> dict:
    """Read one CIFAR batch pickle with the restricted unpickler.

    Returns the batch dict with ``str`` keys (``"data"``: (N, 3072) uint8, ``"labels"``: list of int).
    Raises ``InputError`` for a file that is not a plain CIFAR batch.
    """
    path = Path(path)
    try:
        batch = _NumpyOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise InputError(
            f"{path} is not a plain CIFAR-10 batch pickle ({err}); use the official "
            "cifar-10-batches-py files"
        ) from None
    if not isinstance(batch, dict):
        raise InputError(f"{path} holds a {type(batch).__name__}, not a CIFAR batch dict; check the file")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _holds_cifar(folder: Path) -> bool:
    return all((folder / f).is_file() for f in _FILES["train"] + _FILES["test"])


_CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# mean/std: the values of Cohen et al.'s released checkpoints (their NormalizeLayer).
@register_dataset(
    DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), _CLASS_NAMES)
)
def _cifar10(info: DatasetInfo, split: str, data_dir: Path | None) -> ArrayImageDataset:
    candidates: list[Path] = []
    for d in search_dirs("cifar10", data_dir):
        candidates += [d, d / _FOLDER]
    folder = find_dir("cifar10", candidates, _holds_cifar, _HOW_TO_GET)
    images, labels = [], []
    for fname in _FILES[split]:
        batch = load_pickle_batch(folder / fname)
        try:
            data = np.asarray(batch["data"], dtype=np.uint8)
            labels.append(np.asarray(batch["labels"], dtype=np.int64).reshape(-1))
        except KeyError as err:
            raise InputError(f"{folder / fname} lacks the {err} entry of a CIFAR-10 batch; check the file") from None
        except (TypeError, ValueError) as err:
            raise InputError(f"{folder / fname}: its data or labels are not arrays of pixel values and labels "
                             f"({err}); use the official files") from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels[-1].shape != (data.shape[0],):
            raise InputError(f"{folder / fname}: data {data.shape} and {labels[-1].shape[0]} labels are no CIFAR-10 "
                             "batch (N rows of 3072 pixel values, one label each); use the official files")
        # Each row is 1024 red, 1024 green, 1024 blue values, each a row-major 32x32 plane.
        images.append(data.reshape(-1, 3, 32, 32))
    return ArrayImageDataset(
        info,
        torch.from_numpy(np.concatenate(images)),
        torch.from_numpy(np.concatenate(labels)),
        split,
        source=folder,
    )
