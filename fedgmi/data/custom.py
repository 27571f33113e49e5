"""Bring your own data: a probabilistic-mixture scenario from your tensors or torch Datasets.

Two ways to say what the K inherent distributions are:

* one labelled dataset plus ``K`` transforms (component ``k`` is the data passed through
  ``transforms[k]``, :class:`~fedgmi.data.shifts.Transformed`), or plus any built-in
  :class:`~fedgmi.data.shifts.Shift` (``shift=Corruption(...)``, ``LabelPermutation()``, ...);
* ``K`` labelled datasets, one per component (a :class:`~fedgmi.data.shifts.DatasetUnion` of
  your own data), resized to one image shape.

The result is an ordinary :class:`~fedgmi.data.Scenario` (disjoint pools, clients' mixture
proportions drawn from ``Dirichlet(alpha)`` or given, ground truth kept for evaluation), which
every algorithm and :func:`fedgmi.federated.server.run_federation` take as they take a built-in
one. Example (runs as written, see docs/guide/own-data.md)::

    import torch
    from torchvision.transforms import v2
    from fedgmi.data.custom import scenario_from_tensors

    images = torch.rand(600, 1, 16, 16)            # your images, (N, C, H, W) in [0, 1]
    labels = torch.randint(0, 4, (600,))           # your labels, (N,) in 0..num_classes-1
    scenario = scenario_from_tensors(
        images, labels,
        transforms=[None, v2.RandomInvert(p=1.0), v2.GaussianBlur(5, sigma=1.5)],
        num_clients=8, samples_per_client=(40, 60), seed=0)
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch

from fedgmi.data.datasets import BaseDataset
from fedgmi.data.scenario import Scenario, ScenarioConfig, build_scenario
from fedgmi.data.shifts import DatasetUnion, Shift, Transformed
from fedgmi.errors import ConfigError

__all__ = ["TensorFile", "base_from_dataset", "base_from_tensors", "scenario_from_datasets", "scenario_from_tensors"]


@dataclass
class CustomScenarioConfig(ScenarioConfig):
    """A :class:`~fedgmi.data.ScenarioConfig` whose ``dataset`` names the user's own data (any
    name; nothing is loaded from a data folder)."""

    def _validate_dataset(self) -> None:
        if isinstance(self.dataset, torch.utils.data.Dataset):
            return
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ConfigError(f"dataset = {self.dataset!r} must be a non-empty name")


def base_from_tensors(images: torch.Tensor, labels: torch.Tensor, name: str = "custom",
                      num_classes: int | None = None) -> BaseDataset:
    """Wrap labelled image tensors as a :class:`~fedgmi.data.BaseDataset`.

    Args:
        images: ``(N, C, H, W)`` (or ``(N, H, W)``, one channel) float in ``[0, 1]`` or uint8
            ``0..255`` (divided by 255).
        labels: ``(N,)`` integer class labels in ``0..num_classes-1``.
        name: Name shown in summaries.
        num_classes: Number of classes (default ``labels.max() + 1``).

    Returns:
        The dataset, images float32.

    Raises:
        ConfigError: Wrong shapes, values outside ``[0, 1]``, labels that are not integers in
            range, fewer than two classes.
    """
    images, labels = torch.as_tensor(images), torch.as_tensor(labels)
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ConfigError(f"images has shape {tuple(images.shape)}; allowed: (N, C, H, W) with C 1 or 3, or (N, H, W)")
    if images.dtype == torch.uint8:
        images = images.to(torch.float32).div_(255.0)
    images = images.to(torch.float32)
    if images.numel() and (not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1):
        raise ConfigError("images must hold finite values in [0, 1] (or uint8 0..255)")
    if labels.dim() != 1 or labels.shape[0] != images.shape[0] or labels.is_floating_point():
        raise ConfigError(f"labels has shape {tuple(labels.shape)} and dtype {labels.dtype}; allowed: "
                          f"({images.shape[0]},) integers, one per image")
    labels = labels.to(torch.int64)
    classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if classes < 2 or labels.min() < 0 or labels.max() >= classes:
        raise ConfigError(f"labels must lie in 0..num_classes-1 with num_classes >= 2; got "
                          f"{int(labels.min())}..{int(labels.max())} and num_classes = {classes}")
    return BaseDataset(name, images.contiguous(), labels, classes,
                       f"{name}: {images.shape[0]} images {tuple(images.shape[1:])}, {classes} classes")


class TensorFile(torch.utils.data.Dataset):
    """Labelled images saved with ``torch.save`` as a dict of two tensors: the dataset that
    ``scenario.dataset`` names by ``class_path`` in a config (or ``--scenario.dataset``)::

        torch.save({"images": images, "labels": labels}, "my_data.pt")   # (N, C, H, W), (N,)

        scenario:
          dataset:
            class_path: fedgmi.data.custom.TensorFile
            init_args: {path: my_data.pt}

    Args:
        path: The file (read with ``torch.load(weights_only=True)``).
        images: Key of the ``(N, C, H, W)`` (or ``(N, H, W)``) images, float in [0, 1] or uint8.
        labels: Key of the ``(N,)`` integer labels.
        name: The dataset's name in summaries and run folder names (default the file's stem).

    Raises:
        ConfigError: A missing or unreadable file, a missing key, or not a tensor under it.
    """

    def __init__(self, path: str, images: str = "images", labels: str = "labels", name: str | None = None) -> None:
        self.path, self.name = path, name or Path(path).stem
        try:
            content = torch.load(path, weights_only=True)
        except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as err:
            raise ConfigError(f"scenario.dataset.init_args.path = {path!r} cannot be read: "
                              f"{getattr(err, 'strerror', None) or str(err).splitlines()[0]}") from None
        for key in (images, labels):
            if not isinstance(content, dict) or not isinstance(content.get(key), torch.Tensor):
                found = sorted(content) if isinstance(content, dict) else type(content).__name__
                raise ConfigError(f"scenario.dataset.init_args.path = {path!r} holds no tensor {key!r} "
                                  f"(found: {found}); save a dict of images and labels")
        self.images, self.labels = content[images], content[labels]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


def base_from_dataset(dataset: torch.utils.data.Dataset, name: str = "custom",
                      num_classes: int | None = None) -> BaseDataset:
    """Read every ``(image, label)`` pair of a map-style torch ``Dataset`` into memory.

    Images may be tensors (``(C, H, W)`` or ``(H, W)``, float in [0, 1] or uint8) or PIL
    images (converted with ``torchvision.transforms.v2.functional.to_image``).

    Raises:
        ConfigError: An item that is not an ``(image, label)`` pair, or as :func:`base_from_tensors`.
    """
    from torchvision.transforms.v2 import functional as tvf

    if isinstance(dataset, TensorFile):  # all in memory already
        return base_from_tensors(dataset.images, dataset.labels, name, num_classes)
    xs, ys = [], []
    for i in range(len(cast(Sized, dataset))):
        item = dataset[i]
        if not isinstance(item, tuple | list) or len(item) < 2:
            raise ConfigError(f"dataset[{i}] is {type(item).__name__}; allowed: an (image, label) pair")
        x, y = item[0], item[1]
        x = x if isinstance(x, torch.Tensor) else tvf.to_image(x)
        xs.append(torch.as_tensor(x).as_subclass(torch.Tensor))
        ys.append(int(y))
    if not xs:
        raise ConfigError("dataset is empty")
    return base_from_tensors(torch.stack(xs), torch.tensor(ys), name, num_classes)


def _config(name: str, shift: Shift, **settings) -> CustomScenarioConfig:
    return CustomScenarioConfig(dataset=name, download=False, shift=shift, **settings)


def scenario_from_tensors(
    images: torch.Tensor,
    labels: torch.Tensor,
    transforms: Sequence[Callable | None] | None = None,
    *,
    shift: Shift | None = None,
    names: Sequence[str] | None = None,
    num_classes: int | None = None,
    name: str = "custom",
    num_clients: int = 10,
    alpha: float = 0.5,
    proportions: list[list[float]] | None = None,
    samples_per_client: tuple[int, int] = (100, 150),
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Scenario:
    """A PM scenario from one labelled image tensor and ``K`` transforms (or a built-in shift).

    Args:
        images: ``(N, C, H, W)`` float in [0, 1] (or uint8); see :func:`base_from_tensors`.
        labels: ``(N,)`` integer labels.
        transforms: ``K`` callables, component ``k`` = ``transforms[k](batch)`` on batches
            ``(n, C, H, W)`` (``None``: unchanged); random transforms are seeded from ``seed``.
        shift: Instead of ``transforms``, any :class:`~fedgmi.data.shifts.Shift`.
        names: Component names for ``transforms``.
        num_classes: Default ``labels.max() + 1``.
        name: The dataset's name in summaries.
        num_clients, alpha, proportions, samples_per_client, test_fraction, seed: As
            :class:`~fedgmi.data.ScenarioConfig`.

    Returns:
        The scenario (client ``x_*`` are ``(n, C H W)`` float32 in [0, 1]).

    Raises:
        ConfigError: Neither or both of ``transforms`` and ``shift``, bad data, or any
            :class:`~fedgmi.data.ScenarioConfig` check (e.g. more samples asked than given).
    """
    if (transforms is None) == (shift is None):
        raise ConfigError("give transforms (K callables) or shift (a fedgmi.data.shifts.Shift), exactly one")
    base = base_from_tensors(images, labels, name, num_classes)
    shift = shift if shift is not None else Transformed(cast(Sequence[Callable | None], transforms), names)
    config = _config(name, shift, num_clients=num_clients, alpha=alpha, proportions=proportions,
                     samples_per_client=tuple(samples_per_client), test_fraction=test_fraction, seed=seed)
    return build_scenario(config, base)


def scenario_from_datasets(
    datasets: torch.utils.data.Dataset | Sequence[torch.utils.data.Dataset],
    transforms: Sequence[Callable | None] | None = None,
    *,
    image_shape: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
    num_classes: int | None = None,
    num_clients: int = 10,
    alpha: float = 0.5,
    proportions: list[list[float]] | None = None,
    samples_per_client: tuple[int, int] = (100, 150),
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Scenario:
    """A PM scenario from torch ``Dataset``\\ s: one dataset and ``K`` transforms, or ``K``
    datasets (one per component, given as a list, ``transforms`` left out).

    Args:
        datasets: One map-style ``Dataset`` of ``(image, label)`` pairs, or a list of ``K``.
        transforms: With one dataset, ``K`` callables as :func:`scenario_from_tensors`.
        image_shape: With ``K`` datasets, the ``(C, H, W)`` every image is resized to
            (default: the first dataset's).
        names: Component names (default ``t0..`` for transforms, ``data0..`` for datasets).
        num_classes: Default: the largest label + 1 (over all datasets).
        num_clients, alpha, proportions, samples_per_client, test_fraction, seed: As
            :class:`~fedgmi.data.ScenarioConfig`.

    Returns:
        The scenario.

    Raises:
        ConfigError: A list of datasets with transforms, one dataset without them, or as
            :func:`base_from_dataset` and :class:`~fedgmi.data.ScenarioConfig`.
    """
    settings = {"num_clients": num_clients, "alpha": alpha, "proportions": proportions,
                    "samples_per_client": tuple(samples_per_client), "test_fraction": test_fraction, "seed": seed}
    if isinstance(datasets, torch.utils.data.Dataset) and not isinstance(datasets, list | tuple):
        if transforms is None:
            raise ConfigError("one dataset needs transforms (K callables); or pass a list of K datasets")
        base = base_from_dataset(datasets, "custom", num_classes)
        return build_scenario(_config("custom", Transformed(transforms, names), **settings), base)
    if transforms is not None:
        raise ConfigError("give a list of K datasets or one dataset with K transforms, not both")
    if not isinstance(datasets, Sequence) or len(datasets) < 2:
        raise ConfigError("datasets must be one Dataset (with transforms) or a list of K >= 2 Datasets")
    labels_names = list(names) if names is not None else [f"data{k}" for k in range(len(datasets))]
    if len(labels_names) != len(datasets) or len(set(labels_names)) != len(labels_names):
        raise ConfigError(f"names = {names!r} must be {len(datasets)} distinct names, one per dataset")
    bases = [base_from_dataset(d, n) for d, n in zip(datasets, labels_names)]
    classes = num_classes or max(b.num_classes for b in bases)
    bases = [BaseDataset(b.name, b.images, b.labels, classes, b.source) for b in bases]
    shift = DatasetUnion(labels_names[1:], None if image_shape is None else list(image_shape))
    return build_scenario(_config(labels_names[0], shift, **settings), bases[0], bases[1:])
