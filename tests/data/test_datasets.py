"""Tests of the base datasets (sklearn digits and the local MNIST IDX test split)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import torch

from fedgmi.data import DATASETS, load_base_dataset, resolve_data_dir
from fedgmi.errors import ConfigError


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """Explicit folders in these tests must not be overridden by FEDGMI_DATA_DIR."""
    monkeypatch.delenv("FEDGMI_DATA_DIR", raising=False)


def _assert_one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and message.strip() == message and message
    return message


def test_datasets_tuple() -> None:
    assert DATASETS == ("mnist", "digits", "fashion_mnist", "kmnist", "emnist", "cifar10")


def test_digits_shape_range_classes(digits_base) -> None:
    ds = digits_base
    assert ds.name == "digits"
    assert ds.images.shape == (1797, 1, 8, 8)
    assert ds.images.dtype == torch.float32 and ds.labels.dtype == torch.int64
    assert ds.images.min() >= 0.0 and ds.images.max() == 1.0
    assert ds.num_classes == 10 and set(ds.labels.tolist()) == set(range(10))
    assert "sklearn" in ds.source


def test_local_mnist_test_split(mnist_base) -> None:
    ds = mnist_base
    assert ds.name == "mnist"
    assert ds.images.shape == (10000, 1, 28, 28)
    assert ds.images.dtype == torch.float32 and ds.labels.dtype == torch.int64
    assert ds.images.min() == 0.0 and ds.images.max() == 1.0
    assert ds.labels.min() == 0 and ds.labels.max() == 9 and ds.num_classes == 10
    assert ds.labels[0].item() == 7  # the well-known first MNIST test label
    assert torch.bincount(ds.labels).tolist()[:2] == [980, 1135]  # official class counts
    assert "local IDX test split" in ds.source


def test_local_mnist_uncompressed_files(mnist_data_dir: Path, mnist_base, tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        src = mnist_data_dir / "MNIST" / "raw" / stem
        if src.is_file():
            shutil.copyfile(src, raw / stem)
        else:
            with gzip.open(f"{src}.gz", "rb") as f_in, open(raw / stem, "wb") as f_out:
                shutil.copyfileobj(f_in, f_out)
    ds = load_base_dataset("mnist", tmp_path, download=False)
    assert torch.equal(ds.images, mnist_base.images)
    assert torch.equal(ds.labels, mnist_base.labels)


def test_unknown_dataset_is_one_line_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        load_base_dataset("foo")
    message = _assert_one_line(err)
    assert "'foo'" in message and "mnist" in message and "digits" in message


def test_missing_folder_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    with pytest.raises(ConfigError) as err:
        load_base_dataset("mnist", missing, download=False)
    message = _assert_one_line(err)
    assert str(missing) in message and "FEDGMI_DATA_DIR" in message


def test_folder_without_mnist_says_what_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_base_dataset("mnist", tmp_path, download=False)
    message = _assert_one_line(err)
    assert str(tmp_path) in message and "t10k-images-idx3-ubyte" in message


def test_corrupt_idx_file_is_config_error(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ConfigError) as err:
        load_base_dataset("mnist", tmp_path, download=False)
    assert str(raw) in _assert_one_line(err)


def test_resolve_data_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert resolve_data_dir(None) == Path("data")
    assert resolve_data_dir(tmp_path) == tmp_path
    assert resolve_data_dir(str(tmp_path)) == tmp_path
    monkeypatch.setenv("FEDGMI_DATA_DIR", "")
    assert resolve_data_dir(tmp_path) == tmp_path  # empty value is ignored
    monkeypatch.setenv("FEDGMI_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(None) == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "env"  # env var wins


def test_env_var_is_used_by_loader(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEDGMI_DATA_DIR", str(tmp_path / "from-env"))
    with pytest.raises(ConfigError) as err:
        load_base_dataset("mnist", tmp_path, download=False)
    assert "from-env" in _assert_one_line(err)
