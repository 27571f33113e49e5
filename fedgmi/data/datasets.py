"""Base image datasets that the probabilistic-mixture scenario is built from.

Known datasets (:data:`DATASETS`; shapes, classes and default models in :data:`DATASET_INFO`):

==================  ============  =======  ==============================================
name                image shape   classes  files under the data folder (torchvision's own)
==================  ============  =======  ==============================================
``mnist``           (1, 28, 28)   10       ``MNIST/raw/*-idx?-ubyte``
``digits``          (1, 8, 8)     10       none: scikit-learn's bundled digits (1,797)
``fashion_mnist``   (1, 28, 28)   10       ``FashionMNIST/raw/*-idx?-ubyte``
``kmnist``          (1, 28, 28)   10       ``KMNIST/raw/*-idx?-ubyte``
``emnist``          (1, 28, 28)   47       ``EMNIST/raw/emnist-balanced-*-idx?-ubyte``
``cifar10``         (3, 32, 32)   10       ``cifar-10-batches-py/{data,test}_batch*``
==================  ============  =======  ==============================================

Every dataset with files is read by torchvision's own dataset class (:class:`~torchvision.
datasets.MNIST`, ``FashionMNIST``, ``KMNIST``, ``EMNIST``, ``CIFAR10``), which downloads it into
the data folder when ``download`` is on and a network is there. Offline, the same classes read
files already in place. The MNIST family also accepts its test split alone
(``t10k-images-idx3-ubyte[.gz]`` with ``t10k-labels-idx1-ubyte[.gz]``, EMNIST:
``emnist-balanced-test-{images-idx3,labels-idx1}-ubyte[.gz]``), read with torchvision's IDX
readers (:func:`torchvision.datasets.mnist.read_image_file`, ``read_label_file``); CIFAR-10 uses
whichever of its two splits (the five training batches, the test batch) is complete.

EMNIST is its ``balanced`` split (Cohen et al. 2017): 47 classes (10 digits, 26 upper-case
letters, 11 lower-case letters whose shapes differ from their capitals), 2,400 training and 400
test images per class. Its IDX files store every image transposed; it is transposed back here
so that characters stand upright like MNIST's digits.

Every image tensor is ``(N, C, H, W)`` float32 in ``[0, 1]`` (8-bit values divided by 255);
labels are ``(N,)`` int64.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import pickle
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedgmi.errors import ConfigError

DATA_DIR_ENV = "FEDGMI_DATA_DIR"
"""Environment variable that, when set and non-empty, overrides any data folder argument."""

DEFAULT_DATA_DIR = Path("data")
"""Data folder used when neither :data:`DATA_DIR_ENV` nor an argument names one."""

MNIST_TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
"""Original IDX file names (without ``.gz``) of the MNIST test split, under ``MNIST/raw``."""

EMNIST_SPLIT = "balanced"
"""The EMNIST split used for ``emnist`` (47 balanced classes)."""

_DOWNLOAD_SOCKET_TIMEOUT_S = 10.0
"""Per-socket-operation timeout while torchvision downloads, so a silent network fails fast."""

_MLP_VAE = {"class_path": "fedgmi.models.ComponentVAE", "init_args": {"hidden_dims": [200], "latent_dim": 10}}
_CONV_VAE = {"class_path": "fedgmi.models.conv_vae.ConvVAE",
             "init_args": {"likelihood": "discretized_logistic", "channels": [32, 64], "latent_dim": 32}}
_SMALL_CNN = {"class_path": "fedgmi.models.heads.CNNClassifier", "init_args": {"channels": [8, 16], "hidden": 64}}


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is, before loading it.

    Attributes:
        name: Key in :data:`DATASET_INFO`.
        image_shape: ``(C, H, W)`` of one image.
        num_classes: Number of class labels.
        classes: Name of every class, in label order.
        folder: Sub-folder of the data folder that torchvision reads and downloads into
            (``""``: the dataset needs no files).
        component: Default component model (``class_path``/``init_args``, without
            ``image_shape``) of the configs for this dataset.
        classifier: Default classifier head/body (``class_path``/``init_args``).
        citation: Where the dataset comes from.
    """

    name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    classes: tuple[str, ...]
    folder: str
    component: dict[str, Any] = field(default_factory=dict)
    classifier: dict[str, Any] = field(default_factory=dict)
    citation: str = ""

    @property
    def colour(self) -> bool:
        """Whether images have three (RGB) channels."""
        return self.image_shape[0] == 3


def _emnist_classes() -> tuple[str, ...]:
    from torchvision.datasets import EMNIST

    return tuple(EMNIST.classes_split_dict[EMNIST_SPLIT])


DATASET_INFO: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", (1, 28, 28), 10, tuple(str(d) for d in range(10)), "MNIST",
                         _MLP_VAE, _SMALL_CNN, "LeCun, Cortes & Burges, the MNIST database"),
    "digits": DatasetInfo("digits", (1, 8, 8), 10, tuple(str(d) for d in range(10)), "",
                          {"class_path": "fedgmi.models.ComponentVAE",
                           "init_args": {"hidden_dims": [128], "latent_dim": 8}},
                          {"class_path": "fedgmi.models.heads.MLPClassifier", "init_args": {}},
                          "UCI optical recognition of handwritten digits (scikit-learn's load_digits)"),
    "fashion_mnist": DatasetInfo(
        "fashion_mnist", (1, 28, 28), 10,
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
         "Ankle boot"), "FashionMNIST", _MLP_VAE, _SMALL_CNN, "Xiao, Rasul & Vollgraf 2017"),
    "kmnist": DatasetInfo("kmnist", (1, 28, 28), 10, ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
                          "KMNIST", _MLP_VAE, _SMALL_CNN, "Clanuwat et al. 2018, Kuzushiji-MNIST"),
    "emnist": DatasetInfo("emnist", (1, 28, 28), 47, (), "EMNIST", _MLP_VAE, _SMALL_CNN,
                          "Cohen, Afshar, Tapson & van Schaik 2017, EMNIST (balanced split)"),
    "cifar10": DatasetInfo(
        "cifar10", (3, 32, 32), 10,
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        "cifar-10-batches-py", _CONV_VAE,
        {"class_path": "fedgmi.models.bodies.CifarCNN", "init_args": {}},
        "Krizhevsky 2009, CIFAR-10"),
}
"""Every known dataset's :class:`DatasetInfo` (EMNIST's class names: :func:`dataset_info`)."""

DATASETS: tuple[str, ...] = tuple(DATASET_INFO)
"""Names accepted by :func:`load_base_dataset`."""


def dataset_info(name: str, key: str = "scenario.dataset") -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name`` (EMNIST's class names filled in from torchvision).

    Raises:
        ConfigError: ``name`` is not one of :data:`DATASETS` (the message names ``key``).
    """
    if name not in DATASET_INFO:
        raise ConfigError(f"{key} = {name!r} is unknown; choose one of: {', '.join(DATASETS)}")
    info = DATASET_INFO[name]
    if name == "emnist" and not info.classes:
        info = DatasetInfo(**{**info.__dict__, "classes": _emnist_classes()})
    return info


@dataclass(frozen=True)
class BaseDataset:
    """A labelled image dataset before any federated partitioning.

    Attributes:
        name: Dataset name, one of :data:`DATASETS` (or the user's own name, see
            :mod:`fedgmi.data.custom`).
        images: ``(N, C, H, W)`` float32 tensor with values in ``[0, 1]``.
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

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = (int(d) for d in self.images.shape[1:])
        return c, h, w


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
        name: One of :data:`DATASETS`.
        data_dir: Data folder, resolved by :func:`resolve_data_dir` (the environment variable
            ``FEDGMI_DATA_DIR`` wins over this argument). Ignored for ``"digits"``.
        download: Whether torchvision may download the dataset into the data folder when it is
            not there yet. Without a network the download fails quickly (10 s socket timeout)
            and local files are used if present.

    Returns:
        The dataset; images ``(N, C, H, W)`` float32 in ``[0, 1]``, labels ``(N,)`` int64.

    Raises:
        ConfigError: ``name`` is unknown; or the data folder does not exist (and ``download``
            is off), holds none of the dataset's files, or those files cannot be read. The
            message names the folder looked in and the download option.
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if name == "digits":
        return _load_digits()
    root = resolve_data_dir(data_dir)
    _check_root(root, name, download)
    if name == "cifar10":
        return _load_cifar10(root, download)
    return _load_idx_family(name, root, download)


def _check_root(root: Path, name: str, download: bool) -> None:
    folder = DATASET_INFO[name].folder
    if root.exists() and not root.is_dir():
        raise ConfigError(f"data folder '{root}' is not a folder; point {DATA_DIR_ENV} at one")
    if not root.exists() and not download:
        raise ConfigError(
            f"data folder '{root}' does not exist; create it, allow download (scenario.download: "
            f"true), or set {DATA_DIR_ENV} to the folder that holds {folder}/"
        )


def _download_hint(download: bool) -> str:
    """The end of a missing-data message: how downloading would (or did not) help."""
    if download:
        return "; the download (scenario.download: true) failed: no network, or a read-only folder?"
    return ", or allow download (scenario.download: true) on a machine online"


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


# ---------------------------------------------------------------------------- MNIST family
def _torchvision_class(name: str):
    """``(class, extra constructor kwargs)`` of an IDX-format dataset."""
    from torchvision import datasets as tvd

    return {"mnist": (tvd.MNIST, {}), "fashion_mnist": (tvd.FashionMNIST, {}),
            "kmnist": (tvd.KMNIST, {}), "emnist": (tvd.EMNIST, {"split": EMNIST_SPLIT})}[name]


def _idx_files(name: str, train: bool) -> tuple[str, str]:
    """Uncompressed IDX file names (images, labels) of one split, under ``<folder>/raw``."""
    if name == "emnist":
        prefix = f"emnist-{EMNIST_SPLIT}-{'train' if train else 'test'}"
        return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    if train:
        return "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
    return MNIST_TEST_FILES


def _load_idx_family(name: str, root: Path, download: bool) -> BaseDataset:
    """The full dataset through torchvision if possible, else the local IDX test split."""
    existed = root.exists()
    full = _try_torchvision_idx(name, root, download)
    if full is not None:
        return full
    local = _find_local_test_split(name, root)
    if local is not None:
        return _read_local_test_split(name, *local)
    info = DATASET_INFO[name]
    where = "did not exist" if not existed else f"holds no {info.folder}"
    test_images, test_labels = _idx_files(name, False)
    raise ConfigError(
        f"data folder '{root}' {where}: looked for torchvision's {info.folder}/raw (train and test "
        f"IDX files) and for {info.folder}/raw/{test_images}[.gz] with {test_labels}[.gz]; "
        f"set {DATA_DIR_ENV} to the folder that holds them" + _download_hint(download)
    )


def _try_torchvision_idx(name: str, root: Path, download: bool) -> BaseDataset | None:
    """Train + test through torchvision's own class, or ``None`` when they are not obtainable.

    Without ``download`` this returns at once unless every uncompressed file torchvision
    checks is present. With it, a failing download (no network, read-only folder) is
    swallowed; a socket timeout bounds how long an unreachable mirror can stall.
    """
    cls, kwargs = _torchvision_class(name)
    if not download and not _torchvision_files_present(name, root):
        return None
    folder = root / DATASET_INFO[name].folder
    try:
        with _tidy_failed_download([root, folder, folder / "raw"]), _socket_timeout(_DOWNLOAD_SOCKET_TIMEOUT_S):
            parts = [cls(str(root), train=t, download=download, **kwargs) for t in (True, False)]
    except (RuntimeError, OSError, EOFError):  # URLError, timeouts, PermissionError are OSError
        return None
    images = torch.cat([p.data for p in parts]).to(torch.float32).div_(255.0).unsqueeze(1)
    if name == "emnist":
        images = images.transpose(-1, -2)  # EMNIST's IDX files store images transposed
    labels = torch.cat([p.targets for p in parts]).to(torch.int64)
    return BaseDataset(
        name=name,
        images=images.contiguous(),
        labels=labels,
        num_classes=DATASET_INFO[name].num_classes,
        source=f"torchvision {cls.__name__} (train+test, {labels.numel()})",
    )


def _torchvision_files_present(name: str, root: Path) -> bool:
    """Whether the uncompressed raw files torchvision checks for are all in place."""
    raw = root / DATASET_INFO[name].folder / "raw"
    return all((raw / n).is_file() for train in (True, False) for n in _idx_files(name, train))


@contextlib.contextmanager
def _tidy_failed_download(folders: list[Path]) -> Iterator[None]:
    """Remove the folders in ``folders`` (deepest last in the list) that did not exist before
    and are still empty afterwards: torchvision creates them before a download that may fail,
    and a failed attempt must not leave empty dataset folders in the user's data folder."""
    missing = [f for f in folders if not f.exists()]
    try:
        yield
    finally:
        for folder in reversed(missing):
            with contextlib.suppress(OSError):  # not empty (a download went through) or gone
                folder.rmdir()


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Temporarily set the process-wide default socket timeout (torchvision sets none)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _find_local_test_split(name: str, root: Path) -> tuple[Path, Path] | None:
    """Paths of the test-split image and label IDX files (plain preferred over ``.gz``)."""
    raw = root / DATASET_INFO[name].folder / "raw"
    found = []
    for stem in _idx_files(name, False):
        candidates = [raw / stem, raw / f"{stem}.gz"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found[0], found[1]


def _read_local_test_split(name: str, images_path: Path, labels_path: Path) -> BaseDataset:
    """Read a test split with torchvision's IDX readers, gunzipping to a temp folder."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    stems = _idx_files(name, False)
    try:
        with tempfile.TemporaryDirectory(prefix="fedgmi-idx-") as tmp:
            raw_images = read_image_file(str(_uncompressed(images_path, Path(tmp))))
            raw_labels = read_label_file(str(_uncompressed(labels_path, Path(tmp))))
    except (OSError, EOFError, AssertionError, TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(
            f"cannot read IDX files in '{images_path.parent}' ({type(exc).__name__}: "
            f"{exc}); restore the original {stems[0]}[.gz] and {stems[1]}[.gz]"
        ) from exc
    if raw_images.shape[0] != raw_labels.shape[0]:
        raise ConfigError(
            f"IDX files in '{images_path.parent}' disagree: {raw_images.shape[0]} images but "
            f"{raw_labels.shape[0]} labels; restore the original IDX files"
        )
    images = raw_images.to(torch.float32).div_(255.0).unsqueeze(1)
    if name == "emnist":
        images = images.transpose(-1, -2)
    return BaseDataset(
        name=name,
        images=images.contiguous(),
        labels=raw_labels.to(torch.int64),
        num_classes=DATASET_INFO[name].num_classes,
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


# ---------------------------------------------------------------------------- CIFAR-10
def _cifar10_class():
    """torchvision's CIFAR10 reading one split whose files are present.

    torchvision's class refuses to read unless all six batches and the meta file match their
    md5 sums. This subclass keeps its reader (the pickled batches, ``__init__``) and its
    download (the archive is md5-checked by ``download_and_extract_archive``) but asks only
    that the requested split's batch files and ``batches.meta`` exist, so that one split on
    its own, or a copy re-written elsewhere, can be read.
    """
    from torchvision.datasets import CIFAR10

    class _CIFAR10Split(CIFAR10):
        def _check_integrity(self) -> bool:
            files = [*(self.train_list if self.train else self.test_list), [self.meta["filename"], None]]
            return all(os.path.isfile(os.path.join(self.root, self.base_folder, f)) for f, _ in files)

        def _load_meta(self) -> None:
            path = os.path.join(self.root, self.base_folder, self.meta["filename"])
            with open(path, "rb") as infile:
                self.classes = pickle.load(infile, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return _CIFAR10Split


def _load_cifar10(root: Path, download: bool) -> BaseDataset:
    """CIFAR-10's complete splits through torchvision (downloading when allowed)."""
    cls = _cifar10_class()
    folder = root / DATASET_INFO["cifar10"].folder
    parts: list[Any] = []
    names: list[str] = []
    for train in (True, False):
        try:
            with _tidy_failed_download([root, folder]), _socket_timeout(_DOWNLOAD_SOCKET_TIMEOUT_S):
                part = cls(str(root), train=train, download=download and not parts)
        except (RuntimeError, OSError, EOFError):
            continue
        except (pickle.UnpicklingError, KeyError, ValueError) as exc:
            raise ConfigError(
                f"cannot read CIFAR-10 batches in '{folder}' ({type(exc).__name__}: {exc}); "
                "restore the original pickled batches"
            ) from exc
        parts.append(part)
        names.append("train" if train else "test")
    if not parts:
        raise ConfigError(
            f"data folder '{root}' holds no CIFAR-10: looked for {folder}/data_batch_1..5 or "
            f"{folder}/test_batch, each with batches.meta; set {DATA_DIR_ENV} to the folder that "
            "holds cifar-10-batches-py/" + _download_hint(download)
        )
    data = torch.cat([torch.from_numpy(p.data) for p in parts])  # (N, 32, 32, 3) uint8
    images = data.permute(0, 3, 1, 2).to(torch.float32).div_(255.0).contiguous()
    labels = torch.tensor([t for p in parts for t in p.targets], dtype=torch.int64)
    return BaseDataset(
        name="cifar10",
        images=images,
        labels=labels,
        num_classes=10,
        source=f"torchvision CIFAR10 ({'+'.join(names)}, {labels.numel()} images from {folder})",
    )
