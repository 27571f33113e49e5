"""Every torchvision-backed loader on small files written here in the dataset's own format.

The files are what torchvision's download leaves on disk (uncompressed IDX files under
``<Folder>/raw``; CIFAR-10's pickled batches under ``cifar-10-batches-py``), so
:func:`fedgmi.data.load_base_dataset` reads them through torchvision's own dataset classes, the
code a user's download goes through; the test-split-only fallback reads ``.gz`` IDX files with
torchvision's IDX readers.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from fedgmi.data import DATASET_INFO, DATASETS, dataset_info, load_base_dataset
from fedgmi.errors import ConfigError
from tests.data.formats import IDX_FOLDERS, write_cifar10, write_idx_dataset

IDX_DATASETS = ("mnist", "fashion_mnist", "kmnist", "emnist")
TORCHVISION_CLASS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST", "emnist": "EMNIST"}


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDGMI_DATA_DIR", raising=False)


def _expected_images(images: np.ndarray, name: str) -> torch.Tensor:
    x = torch.from_numpy(images).to(torch.float32).div(255.0).unsqueeze(1)
    return x.transpose(-1, -2) if name == "emnist" else x  # EMNIST's files hold transposed images


@pytest.mark.parametrize("name", IDX_DATASETS)
def test_idx_family_reads_torchvision_files(tmp_path: Path, name: str) -> None:
    classes = DATASET_INFO[name].num_classes
    written = write_idx_dataset(tmp_path, name, n_train=3 * classes, n_test=classes, num_classes=classes, seed=1)
    ds = load_base_dataset(name, tmp_path, download=False)
    assert ds.name == name and ds.num_classes == classes
    assert ds.images.shape == (4 * classes, *DATASET_INFO[name].image_shape)
    assert ds.images.dtype == torch.float32 and ds.labels.dtype == torch.int64
    assert torch.equal(ds.images, _expected_images(written["images"], name))
    assert torch.equal(ds.labels, torch.from_numpy(written["labels"]).long())
    assert f"torchvision {TORCHVISION_CLASS[name]} (train+test" in ds.source


@pytest.mark.parametrize("name", IDX_DATASETS)
def test_idx_family_test_split_alone_gz(tmp_path: Path, name: str) -> None:
    written = write_idx_dataset(tmp_path, name, 0, 25, num_classes=10, seed=2, train=False, gz=True)
    ds = load_base_dataset(name, tmp_path, download=False)
    assert torch.equal(ds.images, _expected_images(written["images"], name))
    assert torch.equal(ds.labels, torch.from_numpy(written["labels"]).long())
    assert "local IDX test split, 25 images" in ds.source


def test_emnist_is_upright_balanced() -> None:
    info = dataset_info("emnist")
    assert info.num_classes == 47 == len(info.classes) and info.classes[:3] == ("0", "1", "2")
    assert info.classes[10] == "A" and "a" in info.classes and "c" not in info.classes


def test_cifar10_reads_pickled_batches(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path, per_batch=12, seed=3)
    ds = load_base_dataset("cifar10", tmp_path, download=False)
    assert ds.images.shape == (72, 3, 32, 32) and ds.num_classes == 10
    assert torch.equal(ds.images, torch.from_numpy(written["images"]).float().div(255.0))
    assert torch.equal(ds.labels, torch.from_numpy(written["labels"]).long())
    assert "torchvision CIFAR10 (train+test, 72 images" in ds.source


def test_cifar10_test_batch_alone(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path, per_batch=9, seed=4, train=False)
    ds = load_base_dataset("cifar10", tmp_path, download=False)
    assert ds.images.shape == (9, 3, 32, 32) and "(test, 9 images" in ds.source
    assert torch.equal(ds.labels, torch.from_numpy(written["labels"]).long())


def test_cifar10_corrupt_batch_is_one_line(tmp_path: Path) -> None:
    write_cifar10(tmp_path, per_batch=4, train=False)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"nothing": 1}))
    with pytest.raises(ConfigError) as err:
        load_base_dataset("cifar10", tmp_path, download=False)
    assert "cifar-10-batches-py" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", [n for n in DATASETS if n != "digits"])
def test_missing_dataset_names_folder_and_download(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_base_dataset(name, tmp_path, download=False)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path) in message
    assert DATASET_INFO[name].folder in message and "scenario.download: true" in message


@pytest.mark.parametrize("name", [n for n in DATASETS if n != "digits"])
def test_missing_data_folder(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_base_dataset(name, tmp_path / "absent", download=False)
    assert "does not exist" in str(err.value) and "scenario.download: true" in str(err.value)


def _build(spec: dict, *args):
    module, _, cls = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), cls)(*args, **spec["init_args"])


@pytest.mark.parametrize("name", DATASETS)
def test_each_dataset_states_shape_classes_and_default_models(name: str) -> None:
    info = dataset_info(name)
    assert len(info.image_shape) == 3 and info.num_classes == len(info.classes) >= 2
    vae = _build(info.component, info.image_shape)
    head = _build(info.classifier, info.image_shape, info.num_classes)
    x = torch.rand(2, *info.image_shape)
    assert vae.elbo(x).shape == (2,) and head(x).shape == (2, info.num_classes)


def test_idx_folders_match_dataset_info() -> None:
    for name, folder in IDX_FOLDERS.items():
        assert DATASET_INFO[name].folder == folder


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10"])
def test_failed_download_leaves_no_empty_folders(tmp_path: Path, name: str, monkeypatch) -> None:
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network is off in this test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    root = tmp_path / "data"
    with pytest.raises(ConfigError, match="the download"):
        load_base_dataset(name, root, download=True)
    assert not root.exists()  # torchvision made folders for the download; they are removed again
