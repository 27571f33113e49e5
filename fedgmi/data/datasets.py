"""Base image datasets that the probabilistic-mixture scenario is built from.

Two datasets are known (:data:`DATASETS`):

* ``"mnist"``: the full MNIST (60,000 train + 10,000 test images) through
  :class:`torchvision.datasets.MNIST`, downloading it when allowed. When that is not possible
  (offline machine, read-only folder) but the folder holds the original IDX files of the test
  split (``MNIST/raw/t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]``), those
  10,000 images are used instead, read with torchvision's own IDX readers.
* ``"digits"``: scikit-learn's bundled 8x8 handwritten digits (1,797 images), always available.

Every image tensor is ``(N, 1, H, W)`` float32 in ``[0, 1]``; labels are ``(N,)`` int64.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from fedgmi.errors import ConfigError

DATASETS: tuple[str, ...] = ("mnist", "digits")
"""Names accepted by :func:`load_base_dataset`."""

DATA_DIR_ENV = "FEDGMI_DATA_DIR"
"""Environment variable that, when set and non-empty, overrides any data folder argument."""

DEFAULT_DATA_DIR = Path("data")
"""Data folder used when neither :data:`DATA_DIR_ENV` nor an argument names one."""

MNIST_TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
"""Original IDX file names (without ``.gz``) of the MNIST test split, under ``MNIST/raw``."""

_DOWNLOAD_SOCKET_TIMEOUT_S = 10.0
"""Per-socket-operation timeout while torchvision downloads, so a silent network fails fast."""


@dataclass(frozen=True)
class BaseDataset:
    """A labelled image dataset before any federated partitioning.

    Attributes:
        name: Dataset name, one of :data:`DATASETS`.
        images: ``(N, 1, H, W)`` float32 tensor with values in ``[0, 1]``.
        labels: ``(N,)`` int64 tensor of class labels in ``[0, num_classes)``.
        num_classes: Number of classes.
        source: Human-readable origin, e.g. ``"torchvision MNIST (train+test, 70000)"``.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    source: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """Decide which folder holds (or receives) the data files.

    Precedence, highest first:

    1. the environment variable ``FEDGMI_DATA_DIR`` when it is set and non-empty;
    2. the ``data_dir`` argument when it is not ``None``;
    3. ``Path("data")`` (relative to the working directory).

    Args:
        data_dir: Folder given by the caller (config or CLI), or ``None``.

    Returns:
        The chosen folder; it is not checked for existence here.
    """
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    if data_dir is not None:
        return Path(data_dir).expanduser()
    return DEFAULT_DATA_DIR


def load_base_dataset(
    name: str, data_dir: str | os.PathLike | None = None, download: bool = True
) -> BaseDataset:
    """Load a base dataset by name.

    Args:
        name: One of :data:`DATASETS` (``"mnist"`` or ``"digits"``).
        data_dir: Data folder for MNIST, resolved by :func:`resolve_data_dir` (the environment
            variable ``FEDGMI_DATA_DIR`` wins over this argument). Ignored for ``"digits"``.
        download: Whether torchvision may download MNIST into the data folder when it is not
            there yet. Without a network the download fails quickly and the local test split is
            used if present.

    Returns:
        The dataset; images ``(N, 1, H, W)`` float32 in ``[0, 1]``, labels ``(N,)`` int64.

    Raises:
        ConfigError: ``name`` is unknown; or, for MNIST, the data folder does not exist (and
            ``download`` is off), holds neither the full dataset nor the test-split IDX files,
            or those files cannot be read.
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if name == "digits":
        return _load_digits()
    return _load_mnist(resolve_data_dir(data_dir), download)


def _load_digits() -> BaseDataset:
    """scikit-learn's bundled digits: ``(1797, 1, 8, 8)`` images scaled from ``0..16``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).div_(16.0).clamp_(0.0, 1.0)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    return BaseDataset(
        name="digits",
        images=images.unsqueeze(1).contiguous(),
        labels=labels,
        num_classes=10,
        source=f"sklearn digits ({labels.numel()} images, 8x8)",
    )


def _load_mnist(root: Path, download: bool) -> BaseDataset:
    """Full MNIST through torchvision if possible, else the local IDX test split."""
    if root.exists() and not root.is_dir():
        raise ConfigError(f"data folder '{root}' is not a folder; point {DATA_DIR_ENV} at one")
    if not root.exists() and not download:
        raise ConfigError(
            f"data folder '{root}' does not exist; create it, allow download, "
            f"or set {DATA_DIR_ENV} to the folder that holds MNIST/raw"
        )
    existed = root.exists()
    full = _try_torchvision_mnist(root, download)
    if full is not None:
        return full
    local = _find_local_test_split(root)
    if local is not None:
        return _read_local_test_split(*local)
    where = "did not exist and the download failed" if not existed else "holds no MNIST"
    raise ConfigError(
        f"data folder '{root}' {where}: looked for torchvision's MNIST/raw (all four files) and "
        f"for MNIST/raw/{MNIST_TEST_FILES[0]}[.gz] with {MNIST_TEST_FILES[1]}[.gz]; "
        f"set {DATA_DIR_ENV} to the folder that holds them"
        + ("" if download else ", or allow download")
    )


def _try_torchvision_mnist(root: Path, download: bool) -> BaseDataset | None:
    """The 70,000-image MNIST via torchvision, or ``None`` when it is not obtainable.

    Without ``download`` this returns at once unless all four raw files are present. With it,
    a failing download (no network, read-only folder) is swallowed; a socket timeout bounds
    how long an unreachable mirror can stall.
    """
    from torchvision.datasets import MNIST

    if not download and not _torchvision_files_present(root):
        return None
    try:
        with _socket_timeout(_DOWNLOAD_SOCKET_TIMEOUT_S):
            parts = [MNIST(str(root), train=t, download=download) for t in (True, False)]
    except (RuntimeError, OSError, EOFError):  # URLError, timeouts, PermissionError are OSError
        return None
    images = torch.cat([p.data for p in parts]).to(torch.float32).div_(255.0).unsqueeze(1)
    labels = torch.cat([p.targets for p in parts]).to(torch.int64)
    return BaseDataset(
        name="mnist",
        images=images.contiguous(),
        labels=labels,
        num_classes=10,
        source=f"torchvision MNIST (train+test, {labels.numel()})",
    )


def _torchvision_files_present(root: Path) -> bool:
    """Whether the four uncompressed raw files torchvision checks for are all in place."""
    from torchvision.datasets import MNIST

    raw = root / "MNIST" / "raw"
    names = (Path(url).name.removesuffix(".gz") for url, _ in MNIST.resources)
    return all((raw / n).is_file() for n in names)


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Temporarily set the process-wide default socket timeout (torchvision sets none)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _find_local_test_split(root: Path) -> tuple[Path, Path] | None:
    """Paths of the test-split image and label IDX files (plain preferred over ``.gz``)."""
    raw = root / "MNIST" / "raw"
    found = []
    for stem in MNIST_TEST_FILES:
        candidates = [raw / stem, raw / f"{stem}.gz"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found[0], found[1]


def _read_local_test_split(images_path: Path, labels_path: Path) -> BaseDataset:
    """Read the MNIST test split with torchvision's IDX readers, gunzipping to a temp folder."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    try:
        with tempfile.TemporaryDirectory(prefix="fedgmi-mnist-") as tmp:
            raw_images = read_image_file(str(_uncompressed(images_path, Path(tmp))))
            raw_labels = read_label_file(str(_uncompressed(labels_path, Path(tmp))))
    except (OSError, EOFError, AssertionError, TypeError, ValueError) as exc:  # corrupt files
        raise ConfigError(
            f"cannot read MNIST IDX files in '{images_path.parent}' ({type(exc).__name__}: "
            f"{exc}); restore the original {MNIST_TEST_FILES[0]}[.gz] and "
            f"{MNIST_TEST_FILES[1]}[.gz]"
        ) from exc
    if raw_images.shape[0] != raw_labels.shape[0]:
        raise ConfigError(
            f"MNIST files in '{images_path.parent}' disagree: {raw_images.shape[0]} images but "
            f"{raw_labels.shape[0]} labels; restore the original IDX files"
        )
    images = raw_images.to(torch.float32).div_(255.0).unsqueeze(1).contiguous()
    return BaseDataset(
        name="mnist",
        images=images,
        labels=raw_labels.to(torch.int64),
        num_classes=10,
        source=f"local IDX test split, {images.shape[0]} images from {images_path.parent}",
    )


def _uncompressed(path: Path, tmp: Path) -> Path:
    """``path`` itself if plain, else its gunzipped copy inside ``tmp``."""
    if path.suffix != ".gz":
        return path
    target = tmp / path.stem
    with gzip.open(path, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return target
