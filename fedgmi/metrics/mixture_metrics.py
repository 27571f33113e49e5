"""The mixture scores as torchmetrics ``Metric``s: state declared with its reduction, ``update``
per batch or per client, ``compute`` once.

What a client (or a batch) contributes is a sum: the confusion counts of its samples' true and
assigned components, the overlap of its estimated and true proportions, its clients' total
variation distances. The server (or torchmetrics' distributed sync, or
:meth:`~torchmetrics.Metric.merge_state`) adds them up, and ``compute`` turns the totals into the
score. Every score is the one of the reference numpy function in
:mod:`fedgmi.metrics.mixture_scores`, on all the samples / clients together:

* :class:`ComponentMatching`: the map of learned to true components (:func:`map_components`:
  Hungarian when K_learned == K_true, else many-to-one);
* :class:`AssignmentAccuracy`: :func:`assignment_accuracy` under that map (or a given one);
* :class:`NormalizedMutualInfo`: :func:`normalized_mutual_info` (scikit-learn's, on the counts);
* :class:`ProportionError`: the mean or max over clients of :func:`proportion_errors`' TV.

Counts are exact, so accuracy, NMI and the map equal the reference bit for bit however the
samples are split into updates; the TV mean is a float sum over clients, equal to the reference
bit for bit when all clients come in one update and to within float rounding otherwise (the sum
order changes). :func:`score_mixture` composes them as the evaluation uses them.

Inputs are tensors (numpy arrays are accepted too). Component indices are ints in
[0, K_true) / [0, K_learned); results are float64 0-dim tensors (the map: an int64 ``(K_learned,)``
tensor, ``mapping[j]`` = the true component of learned j).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from fedgmi.metrics.mixture_scores import (
    map_components,
    normalized_mutual_info,
    proportion_errors,
)

__all__ = [
    "AssignmentAccuracy",
    "ComponentConfusion",
    "ComponentMatching",
    "MixtureScores",
    "NormalizedMutualInfo",
    "ProportionError",
    "score_mixture",
]


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} = {value!r} is invalid; allowed: an int >= 1")
    return int(value)


def _components(values: Any, name: str, limit: int, device: torch.device) -> Tensor:
    """(N,) int64 component indices in [0, limit), on ``device``."""
    values = torch.as_tensor(values, device=device)
    if values.dim() != 1 or values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise ValueError(f"{name} has dtype {values.dtype} and shape {tuple(values.shape)}; "
                         "allowed: a 1-d integer tensor of component indices")
    values = values.long()
    if values.numel() and (values.min() < 0 or values.max() >= limit):
        raise ValueError(f"{name} holds components outside [0, {limit}): "
                         f"{values.min().item()}..{values.max().item()}")
    return values


def _mapping_array(mapping: Any) -> np.ndarray:
    """A map as a (K_learned,) int64 array (a 0-dim tensor, torchmetrics' squeezed result for
    K_learned = 1, included)."""
    return np.asarray(torch.as_tensor(mapping).cpu(), dtype=np.int64).reshape(-1)


def _proportions(values: Any, name: str, columns: int) -> Tensor:
    """(C, columns) float64 proportions."""
    values = torch.as_tensor(values).double()
    if values.dim() != 2 or values.shape[1] != columns:
        raise ValueError(f"{name} has shape {tuple(values.shape)}; allowed: (C, {columns})")
    return values


class ComponentConfusion(Metric):
    """Confusion counts of true and assigned components, summed over updates.

    Args:
        num_components: K_true.
        num_learned: K_learned (default K_true).
        kwargs: torchmetrics' ``Metric`` options (``dist_sync_on_step``, ...).

    Raises:
        ValueError: A count that is not an int >= 1.
    """

    is_differentiable = False
    higher_is_better: bool | None = None
    full_state_update = False
    confusion: Tensor

    def __init__(self, num_components: int, num_learned: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_components = _check_count("num_components", num_components)
        self.num_learned = _check_count("num_learned", num_components if num_learned is None else num_learned)
        self.add_state("confusion", default=torch.zeros(self.num_components, self.num_learned, dtype=torch.long),
                       dist_reduce_fx="sum")

    def update(self, true: Tensor, pred: Tensor) -> None:
        """Add samples.

        Args:
            true: (N,) int true components, in [0, K_true).
            pred: (N,) int assigned learned components, in [0, K_learned).

        Raises:
            ValueError: Not 1-d integer tensors of the same length, or an index out of range.
        """
        true = _components(true, "true", self.num_components, self.confusion.device)
        pred = _components(pred, "pred", self.num_learned, self.confusion.device)
        if true.shape != pred.shape:
            raise ValueError(f"true {tuple(true.shape)} and pred {tuple(pred.shape)} differ in length")
        cells = self.num_components * self.num_learned
        self.confusion += torch.bincount(true * self.num_learned + pred, minlength=cells).view_as(self.confusion)

    def compute(self) -> Tensor:
        """(K_true, K_learned) int64 counts ``M[t, j]`` (as :func:`confusion_matrix`)."""
        return self.confusion

    def _counts(self) -> np.ndarray:
        return self.confusion.cpu().numpy()


class NormalizedMutualInfo(ComponentConfusion):
    """:func:`normalized_mutual_info` of assignments and true components (scikit-learn's, with
    arithmetic-mean normalisation), from the accumulated confusion counts; needs no map.

    ``compute`` returns a float64 0-dim tensor in [0, 1] (1.0 for no samples, as scikit-learn).
    """

    higher_is_better = True

    def compute(self) -> Tensor:
        counts = self._counts()
        true, pred = np.nonzero(counts)  # the occupied cells, row-major
        repeats = counts[true, pred]
        # scikit-learn's NMI depends on the labels only through these counts: rebuilding one
        # label pair per sample gives its exact value.
        value = normalized_mutual_info(np.repeat(true, repeats), np.repeat(pred, repeats))
        return torch.tensor(value, dtype=torch.float64)


class ComponentMatching(ComponentConfusion):
    """The map of learned to true components (:func:`map_components`), from the confusion counts
    and, for the many-to-one map, the proportions' overlap.

    ``update(true, pred, estimated_pi=None, true_pi=None)``: samples, and optionally the
    (C, K_learned) estimated and (C, K_true) true proportions of the clients they come from,
    whose overlap ``sum_c pi_ct pi_hat_cj`` (a float64 sum over clients) maps a learned component
    no sample is assigned to. ``compute`` returns the (K_learned,) int64 map (0-dim for
    K_learned = 1: torchmetrics squeezes single-element results; ``.reshape(-1)`` restores it).
    """

    overlap: Tensor
    proportion_rows: Tensor

    def __init__(self, num_components: int, num_learned: int | None = None, **kwargs: Any) -> None:
        super().__init__(num_components, num_learned, **kwargs)
        self.add_state("overlap", default=torch.zeros(self.num_components, self.num_learned, dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.add_state("proportion_rows", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, true: Tensor, pred: Tensor, estimated_pi: Tensor | None = None,
               true_pi: Tensor | None = None) -> None:
        """Add samples and, optionally, their clients' proportions.

        Raises:
            ValueError: Bad indices (as :meth:`ComponentConfusion.update`), only one of the two
                proportion tables, or tables of the wrong shape.
        """
        super().update(true, pred)
        if (estimated_pi is None) != (true_pi is None):
            raise ValueError("estimated_pi and true_pi go together: give both or neither")
        if estimated_pi is None:
            return
        estimated = _proportions(estimated_pi, "estimated_pi", self.num_learned)
        truth = _proportions(true_pi, "true_pi", self.num_components)
        if estimated.shape[0] != truth.shape[0]:
            raise ValueError(f"estimated_pi {tuple(estimated.shape)} and true_pi {tuple(truth.shape)} "
                             "have different numbers of clients")
        self.overlap += (truth.T @ estimated).to(self.overlap.device)  # (K_true, K_learned)
        self.proportion_rows += truth.shape[0]

    def _mapping(self) -> np.ndarray:
        overlap = np.nan_to_num(self.overlap.cpu().numpy()) if self.proportion_rows > 0 else None
        return map_components(self._counts(), overlap)

    def compute(self) -> Tensor:
        return torch.from_numpy(self._mapping())


class AssignmentAccuracy(ComponentMatching):
    """Fraction of samples whose assigned component, mapped to a true one, is their own
    (:func:`assignment_accuracy`).

    Args:
        num_components: K_true.
        num_learned: K_learned (default K_true).
        mapping: (K_learned,) a fixed learned -> true map (e.g. the x-only assignments' map,
            to score other assignments through it); ``None``: the map of the accumulated
            samples (:class:`ComponentMatching`).
        kwargs: torchmetrics' ``Metric`` options.

    ``compute`` returns a float64 0-dim tensor in [0, 1].

    Raises:
        ValueError: A map of the wrong length or with entries outside [0, K_true); at
            ``compute``, no samples.
    """

    higher_is_better = True

    def __init__(self, num_components: int, num_learned: int | None = None, mapping: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(num_components, num_learned, **kwargs)
        self.fixed_mapping = None
        if mapping is not None:
            fixed = _mapping_array(mapping)
            if fixed.shape != (self.num_learned,) or fixed.min() < 0 or fixed.max() >= self.num_components:
                raise ValueError(f"mapping {fixed.tolist()} is invalid; allowed: {self.num_learned} "
                                 f"true components in [0, {self.num_components})")
            self.fixed_mapping = fixed

    def compute(self) -> Tensor:
        counts = self._counts()
        total = int(counts.sum())
        if total == 0:
            raise ValueError("assignment_accuracy needs at least one sample")
        mapping = self._mapping() if self.fixed_mapping is None else self.fixed_mapping
        correct = int(counts[mapping, np.arange(self.num_learned)].sum())
        return torch.tensor(correct / total, dtype=torch.float64)


class ProportionError(Metric):
    """Total-variation distance between estimated and true mixture proportions over clients
    (:func:`proportion_errors`: ``TV_c = 0.5 ||pi_hat_c - pi_c||_1``, pi_hat_c summed by true
    component through ``mapping``); its mean (``proportion_error_tv``) or max
    (``proportion_error_max``) over every client of every update.

    Args:
        mapping: (K_learned,) learned -> true map (from :class:`ComponentMatching`).
        num_components: K_true.
        reduction: ``"mean"`` or ``"max"`` over clients.
        kwargs: torchmetrics' ``Metric`` options.

    ``compute`` returns a float64 0-dim tensor in [0, 1].

    Raises:
        ValueError: A bad reduction, K_true or map; at ``update``, tables of the wrong shape; at
            ``compute``, no clients.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    tv_sum: Tensor
    tv_max: Tensor
    num_clients: Tensor

    def __init__(self, mapping: Any, num_components: int, reduction: Literal["mean", "max"] = "mean",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if reduction not in ("mean", "max"):
            raise ValueError(f"reduction = {reduction!r} is unknown; allowed: mean, max")
        self.num_components = _check_count("num_components", num_components)
        self.mapping = _mapping_array(mapping)
        if not self.mapping.size or self.mapping.min() < 0 \
                or self.mapping.max() >= self.num_components:
            raise ValueError(f"mapping {self.mapping.tolist()} is invalid; allowed: a (K_learned,) map "
                             f"to true components in [0, {self.num_components})")
        self.reduction = reduction
        self.add_state("tv_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tv_max", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="max")
        self.add_state("num_clients", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, estimated_pi: Tensor, true_pi: Tensor) -> None:
        """Add clients.

        Args:
            estimated_pi: (C, K_learned) estimated proportions, columns by learned component.
            true_pi: (C, K_true) true proportions.
        """
        estimated = _proportions(estimated_pi, "estimated_pi", len(self.mapping)).cpu().numpy()
        truth = _proportions(true_pi, "true_pi", self.num_components).cpu().numpy()
        if not len(truth):
            return
        tv, _, _ = proportion_errors(estimated, truth, self.mapping)  # (C,), the reference
        device = self.tv_sum.device
        self.tv_sum += torch.tensor(tv.sum(), dtype=torch.float64, device=device)
        self.tv_max = torch.maximum(self.tv_max, torch.tensor(tv.max(), dtype=torch.float64, device=device))
        self.num_clients += len(tv)

    def compute(self) -> Tensor:
        if self.num_clients == 0:
            raise ValueError("proportion errors need at least one client")
        return self.tv_sum / self.num_clients if self.reduction == "mean" else self.tv_max


@dataclass(frozen=True)
class MixtureScores:
    """The matched mixture scores of one evaluation (see :func:`score_mixture`)."""

    assignment_accuracy: float
    nmi: float
    proportion_error_tv: float
    proportion_error_max: float
    mapping: np.ndarray  # (K_learned,) learned -> true


def score_mixture(
    true_z: np.ndarray,
    pred_z: np.ndarray,
    estimated_pi: np.ndarray,
    true_pi: np.ndarray,
) -> MixtureScores:
    """Score assignments and proportions with one map (:class:`ComponentMatching`).

    Args:
        true_z: (N,) true components of all evaluated samples (all clients concatenated).
        pred_z: (N,) most probable learned component of each sample.
        estimated_pi: (C, K_learned) estimated mixture proportions.
        true_pi: (C, K_true) true mixture proportions.

    Returns:
        The scores, equal bit for bit to the reference functions of
        :mod:`fedgmi.metrics.mixture_scores` on the same inputs.
    """
    num_components, num_learned = true_pi.shape[1], estimated_pi.shape[1]
    true_z, pred_z = torch.as_tensor(np.asarray(true_z)), torch.as_tensor(np.asarray(pred_z))
    matching = ComponentMatching(num_components, num_learned)
    matching.update(true_z, pred_z, estimated_pi, true_pi)
    mapping = matching.compute().reshape(-1)
    accuracy = AssignmentAccuracy(num_components, num_learned, mapping=mapping)
    nmi = NormalizedMutualInfo(num_components, num_learned)
    tv = {r: ProportionError(mapping, num_components, r) for r in ("mean", "max")}
    for metric in (accuracy, nmi):
        metric.update(true_z, pred_z)
    for metric in tv.values():
        metric.update(estimated_pi, true_pi)
    return MixtureScores(
        assignment_accuracy=accuracy.compute().item(),
        nmi=nmi.compute().item(),
        proportion_error_tv=tv["mean"].compute().item(),
        proportion_error_max=tv["max"].compute().item(),
        mapping=mapping.numpy(),
    )
