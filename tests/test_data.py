"""Dataset registry and readers: tiny files in each real format, read back exactly."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from diffsmooth.data import (
    DatasetInfo,
    ImageDataset,
    dataset_info,
    list_datasets,
    load_dataset,
    load_pickle_batch,
    read_idx,
)
from diffsmooth.data import idx as idx_module
from diffsmooth.validate import InputError


@pytest.fixture(autouse=True)
def isolated_search_path(monkeypatch, tmp_path):
    """No test may find data in the real environment, cache or system folders."""
    monkeypatch.delenv("DIFFSMOOTH_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setitem(idx_module.SYSTEM_DIRS, "fashion-mnist", (str(tmp_path / "usr-share-fmnist"),))


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx_split(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, arr in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        data = idx_bytes(arr)
        if gz:
            (folder / (stem + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)


def tiny_mnist(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def test_registry_and_infos_without_loading():
    assert list_datasets() == ["cifar10", "digits", "fashion-mnist", "imagenet", "mnist"]
    info = dataset_info("cifar10")
    assert info == DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
                               info.class_names)
    assert info.class_names[0] == "airplane" and len(info.class_names) == 10
    assert dataset_info("fashion-mnist").mean == (0.2860,)
    assert dataset_info("imagenet").std == (0.229, 0.224, 0.225)
    with pytest.raises(AttributeError):
        info.num_classes = 3  # type: ignore[misc]
    with pytest.raises(InputError, match="unknown dataset 'svhn'; choose one of: cifar10, digits, fashion-mnist"):
        dataset_info("svhn")
    with pytest.raises(InputError, match="unknown dataset 'svhn'"):
        load_dataset("svhn")
    with pytest.raises(InputError, match="split='train' or split='test'"):
        load_dataset("digits", split="val")


def test_a_dataset_is_registered_once_with_its_info_and_its_loader(monkeypatch):
    from diffsmooth.data import ArrayImageDataset, register_dataset, registry

    monkeypatch.setattr(registry, "_DATASETS", dict(registry._DATASETS))  # forget "tiny" after the test
    info = DatasetInfo("tiny", 2, 1, 2, (0.5,), (0.5,))

    @register_dataset(info)
    def _tiny(given, split, data_dir):
        return ArrayImageDataset(given, torch.zeros(3, 1, 2, 2, dtype=torch.uint8), [0, 1, 0], split)

    assert "tiny" in list_datasets() and dataset_info("tiny") is info
    ds = load_dataset("tiny", split="train")
    assert ds.info is info and len(ds) == 3 and ds.split == "train"


def test_read_idx_hand_made_int32_file(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(bytes([0, 0, 0x0C, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + struct.pack(">6i", 1, -2, 3, 70000, 5, -6))
    out = read_idx(path)
    assert out.dtype == np.int32 and out.tolist() == [[1, -2, 3], [70000, 5, -6]]


def test_read_idx_rejects_truncated_and_foreign_files(tmp_path):
    images, _ = tiny_mnist(0, 3)
    cut = tmp_path / "cut"
    cut.write_bytes(idx_bytes(images)[:-10])
    with pytest.raises(InputError, match="truncated, download it again"):
        read_idx(cut)
    foreign = tmp_path / "foreign"
    foreign.write_bytes(b"PK\x03\x04rest")
    with pytest.raises(InputError, match="not an IDX file"):
        read_idx(foreign)


def test_mnist_gzipped_and_raw_idx_read_back_exactly(tmp_path):
    train_x, train_y = tiny_mnist(1, 5)
    test_x, test_y = tiny_mnist(2, 3)
    write_idx_split(tmp_path / "m", "train", train_x, train_y, gz=True)
    write_idx_split(tmp_path / "m", "t10k", test_x, test_y, gz=False)
    for split, xs, ys in (("train", train_x, train_y), ("test", test_x, test_y)):
        ds = load_dataset("mnist", split=split, data_dir=tmp_path / "m")
        assert isinstance(ds, ImageDataset) and len(ds) == len(ys) and ds.info.name == "mnist"
        for i in range(len(ys)):
            image, label = ds[i]
            assert image.dtype == torch.float32 and image.shape == (1, 28, 28)
            assert torch.equal(image[0], torch.from_numpy(xs[i]).float() / 255.0)
            assert type(label) is int and label == int(ys[i])
        images, labels = ds.tensors()
        assert images.shape == (len(ys), 1, 28, 28) and labels.tolist() == ys.tolist()


def test_fashion_mnist_search_path_env_and_cache(tmp_path, monkeypatch):
    x, y = tiny_mnist(3, 4)
    # $DIFFSMOOTH_DATA/<name>
    write_idx_split(tmp_path / "env" / "fashion-mnist", "t10k", x, y, gz=True)
    monkeypatch.setenv("DIFFSMOOTH_DATA", str(tmp_path / "env"))
    assert load_dataset("fashion-mnist").labels.tolist() == y.tolist()
    # the user cache, once the environment variable is gone
    monkeypatch.delenv("DIFFSMOOTH_DATA")
    write_idx_split(tmp_path / "xdg-cache" / "diffsmooth" / "datasets" / "fashion-mnist", "t10k",
                    x[:2], y[:2], gz=False)
    ds = load_dataset("fashion-mnist")
    assert len(ds) == 2 and ds.info.class_names[9] == "Ankle boot"
    # data_dir/<name> wins over the cache
    write_idx_split(tmp_path / "dd" / "fashion-mnist", "t10k", x[:3], y[:3], gz=True)
    assert len(load_dataset("fashion-mnist", data_dir=tmp_path / "dd")) == 3


def test_missing_dataset_messages_say_where_and_how(tmp_path):
    # A --data-dir that does not exist is named as such: never silently replaced by another copy.
    with pytest.raises(InputError, match="--data-dir .*mine is not a folder"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "mine")
    (tmp_path / "mine").mkdir()
    with pytest.raises(InputError) as err:
        load_dataset("fashion-mnist", data_dir=tmp_path / "mine")
    msg = str(err.value)
    assert str(tmp_path / "mine" / "fashion-mnist") in msg and "xdg-cache" not in msg  # only where asked
    with pytest.raises(InputError) as err:
        load_dataset("fashion-mnist")
    msg = str(err.value)
    assert "\n" not in msg
    for where in (tmp_path / "xdg-cache" / "diffsmooth" / "datasets" / "fashion-mnist", tmp_path / "usr-share-fmnist"):
        assert str(where) in msg
    assert "make data" in msg and "apt-get install dataset-fashion-mnist" in msg
    with pytest.raises(InputError, match="dataset 'mnist' not found .*t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist")
    with pytest.raises(InputError, match="dataset 'cifar10' not found .*cifar-10-batches-py"):
        load_dataset("cifar10", data_dir=tmp_path)
    with pytest.raises(InputError, match="dataset 'imagenet' not found .*val/n01440764"):
        load_dataset("imagenet", data_dir=tmp_path)


def write_cifar(root: Path, protocol: int) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(protocol)
    written = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        labels = [i % 10, (i + 3) % 10]
        batch = {b"batch_label": b"batch", b"labels": labels, b"data": data,
                 b"filenames": [b"a.png", b"b.png"]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        written[name] = (data, labels)
    return written


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_batches_read_back_exactly(tmp_path, protocol):
    written = write_cifar(tmp_path, protocol)
    test = load_dataset("cifar10", split="test", data_dir=tmp_path)
    data, labels = written["test_batch"]
    assert len(test) == 2 and test.labels.tolist() == labels
    image, label = test[1]
    assert image.shape == (3, 32, 32) and label == labels[1]
    # Row layout: 1024 red, then 1024 green, then 1024 blue values, each row-major 32x32.
    assert round(image[1, 0, 5].item() * 255) == data[1, 1024 + 5]
    assert round(image[2, 31, 31].item() * 255) == data[1, 3071]
    assert torch.equal(image, torch.from_numpy(data[1].reshape(3, 32, 32)).float() / 255.0)
    train = load_dataset("cifar10", split="train", data_dir=tmp_path / "cifar-10-batches-py")
    assert len(train) == 10
    assert train.labels.tolist() == sum((written[f"data_batch_{k}"][1] for k in range(1, 6)), [])


def test_cifar_pickle_with_code_is_refused_not_executed(tmp_path):
    target = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(target)!r}, 'w').close()",))

    payload = pickle.dumps({b"data": Evil(), b"labels": [0]}, protocol=2)
    pickle.loads(payload)  # control: a plain unpickler does run the payload
    assert target.exists()
    target.unlink()
    path = tmp_path / "test_batch"
    path.write_bytes(payload)
    with pytest.raises(InputError, match=r"refusing to load global __builtin__\.exec"):
        load_pickle_batch(path)
    assert not target.exists()


def _jpeg(path: Path, size: tuple[int, int], color: tuple[int, int, int]) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, quality=95)


def test_imagenet_class_folders_resize_and_crop(tmp_path):
    _jpeg(tmp_path / "val" / "n01440764" / "ILSVRC2012_val_00000001.JPEG", (400, 300), (200, 30, 90))
    _jpeg(tmp_path / "val" / "n01443537" / "ILSVRC2012_val_00000002.JPEG", (256, 512), (10, 250, 128))
    _jpeg(tmp_path / "val" / "n01443537" / "ILSVRC2012_val_00000003.jpg", (224, 224), (0, 0, 0))
    with pytest.warns(UserWarning, match="3 class folders|2 class folders"):
        ds = load_dataset("imagenet", data_dir=tmp_path)
    assert ds.info.class_names == ("n01440764", "n01443537") and ds.info.num_classes == 1000
    assert ds.labels.tolist() == [0, 1, 1]
    for i, color in enumerate([(200, 30, 90), (10, 250, 128), (0, 0, 0)]):
        image, _ = ds[i]
        assert image.shape == (3, 224, 224) and image.dtype == torch.float32
        # JPEG keeps a flat colour within a couple of levels
        assert torch.allclose(image.mean(dim=(1, 2)), torch.tensor(color) / 255.0, atol=3 / 255)
    # <root>/<wnid>/ without val/ works too
    with pytest.warns(UserWarning):
        assert len(load_dataset("imagenet", data_dir=tmp_path / "val")) == 3


def test_digits_split_and_scaling():
    test = load_dataset("digits")
    train = load_dataset("digits", split="train")
    assert (len(train), len(test)) == (1437, 360)
    images, labels = test.tensors()
    assert images.shape == (360, 1, 8, 8)
    assert torch.equal(images * 16, (images * 16).round()) and images.max() == 1.0 and images.min() == 0.0
    from sklearn.datasets import load_digits

    assert labels.tolist() == load_digits().target[1437:].tolist()
