"""Writers of small datasets in each dataset's own on-disk format, for the loader tests.

The files are what torchvision's download leaves on disk (so the loaders read them through the
same code a user's download goes through): IDX files (LeCun et al.'s format: a big-endian magic
number ``0x0000080n`` with ``n`` dimensions, the dimensions as big-endian int32, then the
unsigned bytes) under ``<Folder>/raw`` for the MNIST family, and pickled batch dictionaries
(``data``: ``(N, 3072)`` uint8 rows in channel-major order, ``labels``: list of ints) plus
``batches.meta`` under ``cifar-10-batches-py`` for CIFAR-10. Data are random, seeded.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

IDX_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST", "emnist": "EMNIST"}
CIFAR_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """Write a uint8 array as an IDX file (``.gz``-compressed when ``gz``)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def idx_names(name: str, train: bool) -> tuple[str, str]:
    """torchvision's uncompressed file names (images, labels) of one split."""
    if name == "emnist":
        prefix = f"emnist-balanced-{'train' if train else 'test'}"
        return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    split = "train" if train else "t10k"
    return f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte"


def write_idx_dataset(root: Path, name: str, n_train: int, n_test: int, num_classes: int = 10,
                      seed: int = 0, train: bool = True, gz: bool = False) -> dict[str, np.ndarray]:
    """Random 28x28 images and labels of a MNIST-family dataset under ``root/<Folder>/raw``.

    Returns:
        The arrays written: ``images`` ``(n, 28, 28)`` uint8 and ``labels`` ``(n,)``, train
        part first (when written), then test.
    """
    rng = np.random.default_rng(seed)
    raw = root / IDX_FOLDERS[name] / "raw"
    images, labels = [], []
    for is_train, n in ((True, n_train), (False, n_test)):
        if is_train and not train:
            continue
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % num_classes).astype(np.uint8)
        rng.shuffle(y)
        img_name, lbl_name = idx_names(name, is_train)
        write_idx(raw / img_name, x, gz)
        write_idx(raw / lbl_name, y, gz)
        images.append(x)
        labels.append(y)
    return {"images": np.concatenate(images), "labels": np.concatenate(labels)}


def write_cifar10(root: Path, per_batch: int, seed: int = 0, train: bool = True) -> dict[str, np.ndarray]:
    """Random CIFAR-10 batches (5 training batches of ``per_batch`` when ``train``, one test
    batch of ``per_batch``) and ``batches.meta`` under ``root/cifar-10-batches-py``.

    Returns:
        ``images`` ``(n, 3, 32, 32)`` uint8 and ``labels`` ``(n,)``, train batches first.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [*(CIFAR_BATCHES if train else ()), "test_batch"]
    images, labels = [], []
    for name in names:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": y, "data": data, "filenames": [f"{i}.png" for i in range(per_batch)]}, f)
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(y))
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
            "num_cases_per_batch": per_batch, "num_vis": 3072}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f)
    return {"images": np.concatenate(images), "labels": np.concatenate(labels)}
