"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA_DIR_ENV = "FEDGMI_DATA_DIR"
MNIST_TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def shared_data_dir() -> Path:
    """The real-data folder: ``$FEDGMI_DATA_DIR``, else ``<repo>/../shared/data``."""
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _has_mnist_test_split(root: Path) -> bool:
    raw = root / "MNIST" / "raw"
    return all((raw / n).is_file() or (raw / f"{n}.gz").is_file() for n in MNIST_TEST_FILES)


@pytest.fixture(scope="session")
def mnist_data_dir() -> Path:
    """Folder holding ``MNIST/raw`` with the test-split IDX files; skips the test if absent."""
    root = shared_data_dir()
    if not _has_mnist_test_split(root):
        pytest.skip(f"MNIST test split not found under {root} (set {DATA_DIR_ENV})")
    return root


@pytest.fixture(scope="session")
def mnist_base(mnist_data_dir: Path):
    """The MNIST base dataset loaded once per session (``download=False``)."""
    from fedgmi.data import load_base_dataset

    return load_base_dataset("mnist", mnist_data_dir, download=False)


@pytest.fixture(scope="session")
def digits_base():
    """scikit-learn's digits as a base dataset, loaded once per session."""
    from fedgmi.data import load_base_dataset

    return load_base_dataset("digits")
