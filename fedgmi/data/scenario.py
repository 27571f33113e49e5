"""The probabilistic-mixture federated scenario (FedGMI).

There are ``K`` *inherent distributions* (components), made from base datasets by a
:class:`~fedgmi.data.shifts.Shift` (``scenario.shift``, chosen by ``class_path``): rotation,
appearance corruption, label permutation, class skew, dataset union, or the user's own
transforms. ``scenario.angles`` is the shorthand for rotation (component ``k`` is the base
dataset with every image rotated by ``angles[k]`` degrees) and the default when neither is
given (``[0, 90, 180]``). Each client ``c`` draws mixture proportions ``pi_c`` (a point of the
K-simplex, Dirichlet(alpha) or given explicitly) and a sample count ``n_c``; its data are
``round(pi_ck * n_c)`` samples of each component, split into a training and a test part that
both follow ``pi_c``.

Every base image is used at most once in the whole scenario (one client, one component, one of
train/test), so there is no leakage between clients, components or train and test.

What the algorithm may see is :class:`ClientData`; the true component of every sample and the
realised proportions live in :class:`GroundTruth`, for evaluation only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedgmi.data.datasets import DATASET_INFO, DATASETS, BaseDataset, load_base_dataset
from fedgmi.data.shifts import Rotation, Shift, check_angles, resize_images, rotate_images
from fedgmi.errors import ConfigError
from fedgmi.validation import MAX_SEED
from fedgmi.validation import is_int as _is_int
from fedgmi.validation import is_real as _is_real

SIMPLEX_TOLERANCE = 1e-6
"""How far from 1 a row of explicit proportions may sum."""


DEFAULT_ANGLES = (0.0, 90.0, 180.0)
"""Rotation of each component when neither ``angles`` nor ``shift`` is given."""


@dataclass
class ScenarioConfig:
    """Settings of the probabilistic-mixture scenario.

    Attributes:
        dataset: Base dataset: one of :data:`fedgmi.data.datasets.DATASETS`, or your own
            map-style torch ``Dataset`` of ``(image, label)`` pairs (in a config: its
            ``class_path`` and ``init_args``, e.g. :class:`fedgmi.data.custom.TensorFile` for a
            tensor file).
        data_dir: Data folder (``FEDGMI_DATA_DIR`` overrides it; see
            :func:`fedgmi.data.datasets.resolve_data_dir`).
        download: Whether torchvision may download the dataset(s).
        angles: Shorthand for ``shift = Rotation(angles)``: rotation in degrees
            (counter-clockwise) of each component; ``K = len(angles)``. ``None`` with no
            ``shift``: ``[0, 90, 180]``.
        shift: The kind of inherent distribution (:mod:`fedgmi.data.shifts`), chosen by
            ``class_path``; give it or ``angles``, not both.
        num_clients: Number of clients ``C``.
        alpha: Dirichlet concentration of each client's mixture proportions (``alpha * 1_K``).
        proportions: Explicit ``C`` rows of ``K`` proportions; overrides ``alpha``.
        samples_per_client: Inclusive ``(min, max)`` range of a client's train+test count.
        test_fraction: Fraction of each client's samples held out as its test part.
        seed: Seed of every random choice; the same config gives the same scenario.
            ``None`` (``null`` in a config): the run's ``--seed``, so that one sweep
            parameter varies both (the CLI fills it in before building; building with
            ``None`` raises).

    Raises:
        ConfigError: On construction (and :meth:`validate`) when a field is invalid, or when the
            shift does not fit a known dataset (e.g. colour on grey images, K too large).
    """

    dataset: str | torch.utils.data.Dataset = "mnist"
    data_dir: str | None = None
    download: bool = True
    angles: list[float] | None = None
    shift: Shift | None = None
    num_clients: int = 30
    alpha: float = 0.5
    proportions: list[list[float]] | None = None
    samples_per_client: tuple[int, int] = (200, 300)
    test_fraction: float = 0.2
    seed: int | None = 0

    def __post_init__(self) -> None:
        self.validate()

    @property
    def resolved_shift(self) -> Shift:
        """``shift``, else :class:`~fedgmi.data.shifts.Rotation` of ``angles`` (default
        ``[0, 90, 180]``)."""
        if self.shift is not None:
            return self.shift
        return Rotation(list(DEFAULT_ANGLES) if self.angles is None else self.angles)

    @property
    def num_components(self) -> int:
        """``K``, the number of inherent distributions."""
        return self.resolved_shift.num_components

    def validate(self) -> None:
        """Check every field; the dataset files themselves are checked at build time.

        Raises:
            ConfigError: One line naming the first bad field, its value and what is allowed.
        """
        self._validate_dataset()
        if self.data_dir is not None and not isinstance(self.data_dir, str | os.PathLike):
            raise ConfigError(f"data_dir = {self.data_dir!r} must be a path or None")
        if not isinstance(self.download, bool):
            raise ConfigError(f"download = {self.download!r} must be true or false")
        self._validate_shift()
        if not _is_int(self.num_clients) or self.num_clients < 1:
            raise ConfigError(f"num_clients = {self.num_clients!r} must be an integer >= 1")
        if not _is_real(self.alpha) or not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ConfigError(f"alpha = {self.alpha!r} must be a finite number > 0")
        if self.proportions is not None:
            self._validate_proportions()
        self._validate_samples()
        tf = self.test_fraction
        if not _is_real(tf) or not 0.0 < tf < 1.0:
            raise ConfigError(f"test_fraction = {tf!r} must be a number strictly between 0 and 1")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED):
            raise ConfigError(f"seed = {self.seed!r} must be an integer in 0..{MAX_SEED} (or null: the run's seed)")

    @property
    def dataset_name(self) -> str:
        """The dataset's name: a built-in one, or your ``Dataset``'s ``name`` attribute (default
        its class name)."""
        if isinstance(self.dataset, str):
            return self.dataset
        return str(getattr(self.dataset, "name", type(self.dataset).__name__))

    def _validate_dataset(self) -> None:
        if isinstance(self.dataset, torch.utils.data.Dataset):  # your own: checked when it is read
            return
        if self.dataset not in DATASETS:
            raise ConfigError(
                f"unknown dataset {self.dataset!r}; choose one of: {', '.join(DATASETS)}"
            )

    def _validate_shift(self) -> None:
        if self.shift is not None:
            if self.angles is not None:
                raise ConfigError(
                    f"angles = {self.angles!r} and shift = {type(self.shift).__name__} are both set; "
                    "give scenario.shift or scenario.angles (a shorthand for Rotation), not both"
                )
            if not isinstance(self.shift, Shift):
                raise ConfigError(f"shift = {self.shift!r} must be a fedgmi.data.shifts.Shift")
            self.shift.validate()
        else:
            check_angles(list(DEFAULT_ANGLES) if self.angles is None else self.angles, "angles")
        names = [self.dataset_name, *self.resolved_shift.other_datasets()]
        unknown = [n for n in names if n not in DATASET_INFO]
        if unknown or not isinstance(self.dataset, str):  # your own dataset: checked at build time
            if isinstance(self.dataset, str) and self.dataset in DATASET_INFO:
                raise ConfigError(f"scenario.shift names unknown dataset(s) {unknown!r}; "
                                  f"choose from: {', '.join(DATASETS)}")
            return
        infos = [DATASET_INFO[n] for n in names]
        self.resolved_shift.check([i.image_shape for i in infos], [i.num_classes for i in infos], names)

    def _validate_proportions(self) -> None:
        rows, k = self.proportions, self.num_components
        if not isinstance(rows, Sequence) or isinstance(rows, str):
            raise ConfigError(f"proportions = {rows!r} must be a list of rows or None")
        if len(rows) != self.num_clients:
            raise ConfigError(
                f"proportions has {len(rows)} rows but num_clients = {self.num_clients}; "
                "give one row per client"
            )
        for i, row in enumerate(rows):
            if not isinstance(row, Sequence) or isinstance(row, str) or len(row) != k:
                raise ConfigError(
                    f"proportions[{i}] = {row!r} must have K = {k} entries (one per component)"
                )
            if not all(_is_real(p) and math.isfinite(p) for p in row):
                raise ConfigError(f"proportions[{i}] = {list(row)!r} must hold finite numbers")
            if min(row) < 0 or abs(math.fsum(row) - 1.0) > SIMPLEX_TOLERANCE:
                raise ConfigError(
                    f"proportions[{i}] = {list(row)!r} is off the simplex: "
                    "entries must be >= 0 and sum to 1"
                )

    def _validate_samples(self) -> None:
        spc = self.samples_per_client
        ok = isinstance(spc, Sequence) and len(spc) == 2 and all(_is_int(v) for v in spc)
        if not ok or spc[0] < 2 or spc[0] > spc[1]:
            raise ConfigError(
                f"samples_per_client = {spc!r} must be two integers (min, max) with 2 <= min <= max"
            )


@dataclass(frozen=True)
class ClientData:
    """Everything the algorithm may see of one client.

    Attributes:
        client_id: Index of the client, ``0..C-1``.
        x_train: ``(n_train, D)`` float32 in ``[0, 1]``, flattened images with
            ``D = prod(image_shape)``.
        y_train: ``(n_train,)`` int64 class labels.
        x_test: ``(n_test, D)`` float32 in ``[0, 1]``.
        y_test: ``(n_test,)`` int64 class labels.
    """

    client_id: int
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@dataclass(frozen=True)
class GroundTruth:
    """The hidden truth of a scenario, for evaluation only; never give it to the algorithm.

    Attributes:
        proportions: ``(C, K)`` float64, realised fractions of each client's training part
            (``bincount(z_train[c]) / n_train``).
        z_train: Per client, ``(n_train,)`` int64 true component of each training sample.
        z_test: Per client, ``(n_test,)`` int64 true component of each test sample.
        base_index_train: Per client, ``(n_train,)`` int64 index of each training sample in
            the base dataset (for leakage checks); with several base datasets
            (:class:`~fedgmi.data.shifts.DatasetUnion`), an index into their concatenation
            (``scenario.dataset`` first, then ``others``).
        base_index_test: Per client, ``(n_test,)`` int64 base-dataset indices of the test part.
        target_proportions: ``(C, K)`` float64, the proportions each client was drawn with
            (its Dirichlet sample or explicit row) before rounding to whole samples.
    """

    proportions: torch.Tensor
    z_train: list[torch.Tensor]
    z_test: list[torch.Tensor]
    base_index_train: list[torch.Tensor]
    base_index_test: list[torch.Tensor]
    target_proportions: torch.Tensor


@dataclass(frozen=True)
class Scenario:
    """A built federated scenario: the clients' data plus the hidden ground truth.

    Attributes:
        clients: One :class:`ClientData` per client, in client-id order.
        truth: The :class:`GroundTruth` (evaluation only).
        image_shape: ``(C, H, W)``; rows of ``x_*`` are these images flattened.
        num_components: ``K``.
        num_classes: Number of class labels.
        component_names: ``K`` names such as ``"rot90"``, ``"noise3"``, ``"shift1"``.
        source: Where the base images came from.
        config: The configuration it was built from.
    """

    clients: list[ClientData]
    truth: GroundTruth
    image_shape: tuple[int, int, int]
    num_components: int
    num_classes: int
    component_names: list[str]
    source: str
    config: ScenarioConfig

    @property
    def num_clients(self) -> int:
        """``C``, the number of clients."""
        return len(self.clients)

    @property
    def input_dim(self) -> int:
        """``D = prod(image_shape)``, the width of every ``x_*`` row."""
        return math.prod(self.image_shape)

    def summary(self) -> str:
        """A few human-readable lines describing the scenario."""
        n_train = sum(c.y_train.numel() for c in self.clients)
        n_test = sum(c.y_test.numel() for c in self.clients)
        lo, hi = self.config.samples_per_client
        mean_pi = ", ".join(f"{p:.3f}" for p in self.truth.proportions.mean(0).tolist())
        drawn = (
            "explicit" if self.config.proportions is not None else f"alpha={self.config.alpha:g}"
        )
        return "\n".join(
            [
                f"dataset: {self.config.dataset_name} ({self.source})",
                (f"components: K={self.num_components} ({', '.join(self.component_names)}), "
                 f"{type(self.config.resolved_shift).__name__}"),
                (
                    f"clients: {self.num_clients}, {lo}..{hi} samples each, "
                    f"test fraction {self.config.test_fraction:g}"
                ),
                f"samples: {n_train} train + {n_test} test",
                f"mean train proportions ({drawn}): [{mean_pi}]",
            ]
        )


def _chw(shape: Sequence[int]) -> tuple[int, int, int]:
    """``(C, H, W)`` of an image shape."""
    c, h, w = (int(d) for d in shape)
    return c, h, w


def component_name(angle: float) -> str:
    """Name of the component with rotation ``angle``: ``0.0 -> "rot0"``, ``22.5 -> "rot22.5"``."""
    return f"rot{float(angle):g}"


def build_scenario(config: ScenarioConfig, base: BaseDataset | None = None,
                   others: list[BaseDataset] | None = None) -> Scenario:
    """Build the probabilistic-mixture scenario described by ``config``.

    Deterministic in ``config.seed``: one :class:`numpy.random.Generator` makes every random
    choice, in this order: proportions, client sizes, the pool (for rotation, corruption and
    label permutation one permutation of the base dataset; class skew draws its class
    distributions and classes first), the shuffles. Rendering randomness (corruption noise)
    is seeded from ``config.seed`` without touching the generator.

    Args:
        config: The scenario settings (validated again here).
        base: An already loaded base dataset to reuse (its name must equal
            ``config.dataset``); loaded from ``config`` when ``None``.
        others: Already loaded datasets of the shift's :meth:`~fedgmi.data.shifts.Shift.
            other_datasets` (dataset union), in order; loaded when ``None``.

    Returns:
        The scenario; client ``x_*`` are ``(n, D)`` float32 in ``[0, 1]``.

    Raises:
        ConfigError: A config field is invalid, a dataset cannot be loaded, ``base`` is a
            different dataset, the shift does not fit the data, or the clients ask for more
            samples than the dataset holds.
    """
    config.validate()
    if config.seed is None:
        raise ConfigError("seed = None: give the scenario an integer seed (the CLI uses the run's --seed)")
    shift = config.resolved_shift
    if base is None and not isinstance(config.dataset, str):
        from fedgmi.data.custom import base_from_dataset
        base = base_from_dataset(config.dataset, config.dataset_name)
    elif base is None:
        base = load_base_dataset(config.dataset_name, config.data_dir, config.download)
    elif base.name != config.dataset_name:
        raise ConfigError(f"base dataset {base.name!r} does not match dataset = {config.dataset_name!r}")
    other_names = shift.other_datasets()
    if others is None:
        others = [load_base_dataset(n, config.data_dir, config.download) for n in other_names]
    elif [o.name for o in others] != other_names:
        raise ConfigError(f"datasets {[o.name for o in others]!r} do not match the shift's {other_names!r}")
    bases = [base, *others]
    shift.check([b.image_shape for b in bases], [b.num_classes for b in bases], [b.name for b in bases])
    rng = np.random.default_rng(config.seed)
    target = _client_proportions(config, rng)
    lo, hi = config.samples_per_client
    totals = rng.integers(lo, hi + 1, size=config.num_clients)
    _check_demand(int(totals.sum()), bases, config)
    train_counts, test_counts = _split_counts(target, totals, config.test_fraction)
    return _assemble(config, shift, bases, rng, target, train_counts, test_counts)


def _client_proportions(config: ScenarioConfig, rng: np.random.Generator) -> np.ndarray:
    """``(C, K)`` float64 rows on the simplex: explicit rows, else Dirichlet(alpha * 1_K)."""
    k = config.num_components
    if config.proportions is not None:
        rows = np.asarray(config.proportions, dtype=np.float64)
        return rows / rows.sum(axis=1, keepdims=True)
    return rng.dirichlet(np.full(k, float(config.alpha)), size=config.num_clients)


def _check_demand(demand: int, bases: list[BaseDataset], config: ScenarioConfig) -> None:
    """Refuse a scenario that needs more distinct base images than the datasets hold."""
    held = sum(len(b) for b in bases)
    if demand > held:
        names = " + ".join(f"{b.name!r} ({b.source})" for b in bases)
        raise ConfigError(
            f"the scenario asks for {demand} samples but dataset {names} holds {held}; "
            "lower samples_per_client or num_clients"
        )


def _split_counts(
    target: np.ndarray, totals: np.ndarray, test_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-(client, component) train and test counts, each ``(C, K)`` int64.

    A client's test size is ``round(test_fraction * n_c)`` kept in ``[1, n_c - 1]``; its train
    and test sizes are each spread over the components by largest-remainder rounding of
    ``pi_c``, so both parts follow ``pi_c`` to within one sample per component.
    """
    n_test = np.clip(np.floor(test_fraction * totals + 0.5).astype(np.int64), 1, totals - 1)
    n_train = totals - n_test
    train = np.stack([_largest_remainder(p, int(n)) for p, n in zip(target, n_train)])
    test = np.stack([_largest_remainder(p, int(n)) for p, n in zip(target, n_test)])
    return train, test


def _largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """``(K,)`` int64 counts summing exactly to ``total``, each within 1 of ``weights * total``.

    Ties in the remainders go to the lower component index.
    """
    raw = weights * total
    counts = np.floor(raw).astype(np.int64)
    missing = total - int(counts.sum())
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[:missing]] += 1
    return counts


def _render(shift: Shift, bases: list[BaseDataset], z: torch.Tensor, source: torch.Tensor,
            index: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sample's image ``(N, *output_shape)`` and label ``(N,)``, one batch per
    (component, source dataset)."""
    shape = shift.output_shape([b.image_shape for b in bases])
    x_all = torch.empty((z.numel(), *shape), dtype=torch.float32)
    y_all = torch.empty(z.numel(), dtype=torch.int64)
    for k in range(shift.num_components):
        for b, base in enumerate(bases):
            mask = (z == k) & (source == b)
            if not bool(mask.any()):
                continue
            images = base.images[index[mask]]
            if tuple(images.shape[1:]) != tuple(shape):
                images = resize_images(images, shape)
            x, y = shift.render(images, base.labels[index[mask]], k, seed)
            x_all[mask], y_all[mask] = x, y
    return x_all, y_all


def _assemble(
    config: ScenarioConfig,
    shift: Shift,
    bases: list[BaseDataset],
    rng: np.random.Generator,
    target: np.ndarray,
    train_counts: np.ndarray,
    test_counts: np.ndarray,
) -> Scenario:
    """Draw the pool, render the components and shuffle each client's parts."""
    # Blocks in (client, part, component) order; the shift draws a distinct base image for
    # every sample (by default consecutive slices of one permutation of the base dataset).
    counts = np.stack([train_counts, test_counts], axis=1)  # (C, 2, K)
    k = shift.num_components
    z_np = np.repeat(np.tile(np.arange(k), counts.shape[0] * 2), counts.ravel())
    source_np, index_np = shift.draw_pool(z_np, [b.labels for b in bases], rng)
    z_all, source, index = (torch.from_numpy(np.asarray(a, dtype=np.int64)) for a in (z_np, source_np, index_np))
    assert config.seed is not None  # build_scenario refuses None first
    x_all, labels = _render(shift, bases, z_all, source, index, config.seed)
    x_all = x_all.flatten(1)
    offsets = torch.tensor(np.cumsum([0] + [len(b) for b in bases[:-1]]), dtype=torch.int64)
    pool = index + offsets[source]  # index into the concatenated base datasets
    segments = counts.sum(axis=2).ravel().tolist()  # sizes of (c, train), (c, test), ...
    parts = []
    for x, y, z, idx in zip(*(t.split(segments) for t in (x_all, labels, z_all, pool))):
        order = torch.from_numpy(rng.permutation(y.numel()))
        parts.append((x[order].contiguous(), y[order], z[order], idx[order]))
    clients = [
        ClientData(c, tr[0], tr[1], te[0], te[1])
        for c, (tr, te) in enumerate(zip(parts[0::2], parts[1::2]))
    ]
    truth = _ground_truth(parts, k, target)
    return Scenario(
        clients=clients,
        truth=truth,
        image_shape=_chw(shift.output_shape([b.image_shape for b in bases])),
        num_components=k,
        num_classes=shift.output_classes([b.num_classes for b in bases]),
        component_names=shift.component_names(),
        source="; ".join(b.source for b in bases),
        config=config,
    )


def _ground_truth(parts: list[tuple], k: int, target: np.ndarray) -> GroundTruth:
    """Collect the hidden labels of the (train, test, train, test, ...) parts."""
    train, test = parts[0::2], parts[1::2]
    realised = torch.stack(
        [torch.bincount(z, minlength=k).to(torch.float64) / z.numel() for _, _, z, _ in train]
    )
    return GroundTruth(
        proportions=realised,
        z_train=[p[2] for p in train],
        z_test=[p[2] for p in test],
        base_index_train=[p[3] for p in train],
        base_index_test=[p[3] for p in test],
        target_proportions=torch.from_numpy(np.asarray(target, dtype=np.float64)),
    )


def render_components(
    images: torch.Tensor, components: torch.Tensor, angles: Sequence[float]
) -> torch.Tensor:
    """Rotate each image by the angle of its component, one batch per component.

    Args:
        images: ``(N, 1, H, W)`` float32 in ``[0, 1]``.
        components: ``(N,)`` int64 component index of each image, in ``[0, len(angles))``.
        angles: Rotation in degrees (counter-clockwise) of each component.

    Returns:
        ``(N, 1, H, W)`` float32 in ``[0, 1]``, a new tensor.
    """
    out = images.clone()
    for k, angle in enumerate(angles):
        mask = components == k
        if bool(mask.any()):
            out[mask] = rotate_images(images[mask], float(angle))
    return out


__all__ = ["ClientData", "GroundTruth", "Scenario", "ScenarioConfig", "build_scenario", "component_name",
           "render_components", "rotate_images"]
