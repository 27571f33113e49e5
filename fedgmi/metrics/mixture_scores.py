"""Scores of an inferred mixture against the true one.

Learned components are unlabelled: component j of the model may have specialised to any true
inherent distribution. Every matched score therefore uses ONE map of learned to true components,
found on the confusion matrix of sample assignments, and reports it with the results
(``mapping[j]`` = the true component of learned j):

* K_learned == K_true: a one-to-one matching by the Hungarian algorithm
  (``scipy.optimize.linear_sum_assignment``, maximum agreement).
* K_learned != K_true (the learned K is a choice of the algorithm, e.g. FedGMI's
  ``num_components``): a many-to-one map, each learned j to the true component most of its
  assigned samples come from (arg-max of confusion column j; ties to the lowest index). A learned
  component no sample is assigned to maps to the true component whose proportions across the
  clients overlap most with its estimated ones, arg-max_t sum_c pi_hat_cj pi_ct (ties, e.g. a
  component with no mass, to the lowest index); without proportions, to the most frequent true
  component. With K_learned < K_true some true components have no learned one.

paper (FedGMI and its peers): K_learned = K_true, one-to-one; here: also the many-to-one map
above, with proportions summed over the learned components mapped to each true one
(:func:`proportion_errors`) and assignments scored through the map.

These numpy functions are the reference definitions; :mod:`fedgmi.metrics.mixture_metrics`
holds the same scores as torchmetrics ``Metric``s (accumulated over batches or clients), which
the evaluation uses.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import normalized_mutual_info_score


def confusion_matrix(true: np.ndarray, pred: np.ndarray, num_components: int,
                     num_learned: int | None = None) -> np.ndarray:
    """Counts of (true component, assigned component) pairs.

    Args:
        true: (N,) int true component of each sample, in [0, K_true).
        pred: (N,) int learned component each sample is assigned to, in [0, K_learned).
        num_components: K_true.
        num_learned: K_learned (default: K_true).

    Returns:
        (K_true, K_learned) int64 matrix ``M[t, j]`` = number of samples of true component t
        assigned to j.
    """
    num_learned = num_components if num_learned is None else num_learned
    true, pred = np.asarray(true, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    counts = np.zeros((num_components, num_learned), dtype=np.int64)
    np.add.at(counts, (true, pred), 1)
    return counts


def match_components(true: np.ndarray, pred: np.ndarray, num_components: int, num_learned: int | None = None,
                     estimated_pi: np.ndarray | None = None, true_pi: np.ndarray | None = None) -> np.ndarray:
    """Map learned to true components (module docstring: one-to-one when the K agree, else
    many-to-one).

    Args:
        true: (N,) int true components.
        pred: (N,) int assigned learned components.
        num_components: K_true.
        num_learned: K_learned (default: K_true).
        estimated_pi: (C, K_learned) estimated proportions (many-to-one only: they map a learned
            component no sample is assigned to).
        true_pi: (C, K_true) true proportions, with ``estimated_pi``.

    Returns:
        (K_learned,) int64 ``mapping`` with ``mapping[j]`` = the true component of learned j.
    """
    counts = confusion_matrix(true, pred, num_components, num_learned)
    overlap = None
    if estimated_pi is not None and true_pi is not None:
        overlap = proportion_overlap(estimated_pi, true_pi)
    return map_components(counts, overlap)


def proportion_overlap(estimated_pi: np.ndarray, true_pi: np.ndarray) -> np.ndarray:
    """(K_true, K_learned) ``sum_c pi_ct pi_hat_cj``, NaN set to 0: how much learned j's estimated
    proportions overlap true t's across the clients (a sum over clients).

    Args:
        estimated_pi: (C, K_learned) estimated proportions.
        true_pi: (C, K_true) true proportions.
    """
    return np.nan_to_num(np.asarray(true_pi, dtype=np.float64).T @ np.asarray(estimated_pi, dtype=np.float64))


def map_components(counts: np.ndarray, overlap: np.ndarray | None = None) -> np.ndarray:
    """The map of :func:`match_components`, from the confusion counts.

    Args:
        counts: (K_true, K_learned) int :func:`confusion_matrix`.
        overlap: (K_true, K_learned) :func:`proportion_overlap`, or ``None``: where K_learned
            differs from K_true it maps a learned component no sample is assigned to (arg-max
            over t); without it, such a component maps to the most frequent true component.

    Returns:
        (K_learned,) int64 ``mapping`` with ``mapping[j]`` = the true component of learned j.
    """
    counts = np.asarray(counts)
    num_components, num_learned = counts.shape
    if num_learned == num_components:
        true_idx, learned_idx = linear_sum_assignment(counts, maximize=True)
        mapping = np.empty(num_components, dtype=np.int64)
        mapping[learned_idx] = true_idx
        return mapping
    mapping = counts.argmax(0).astype(np.int64)
    empty = counts.sum(0) == 0
    if empty.any():
        if overlap is not None:
            mapping[empty] = np.asarray(overlap)[:, empty].argmax(0)  # per empty column
        else:
            mapping[empty] = counts.sum(1).argmax()
    return mapping


def is_one_to_one(mapping: np.ndarray) -> bool:
    """Whether ``mapping`` is a permutation of 0..K-1 (the K_learned == K_true matching)."""
    mapping = np.asarray(mapping)
    return bool(np.array_equal(np.sort(mapping), np.arange(len(mapping))))


def learned_of_true(mapping: np.ndarray) -> np.ndarray:
    """Invert a one-to-one matching: (K,) ``learned_of_true[t]`` = the learned component matched
    to true t (``mapping[j]`` = the true component of learned j).

    Raises:
        ValueError: ``mapping`` is many-to-one (use :func:`learned_order` / :func:`learned_groups`).
    """
    if not is_one_to_one(mapping):
        raise ValueError(f"mapping {np.asarray(mapping).tolist()} is not one-to-one")
    return np.argsort(np.asarray(mapping))


def learned_order(mapping: np.ndarray) -> np.ndarray:
    """(K_learned,) the learned components sorted by their true component (stable: by index
    within one true component); equals :func:`learned_of_true` for a one-to-one matching."""
    return np.argsort(np.asarray(mapping), kind="stable")


def matched_column_names(mapping: np.ndarray) -> list[str]:
    """Names of the columns of a table in :func:`learned_order`: one-to-one, ``c{t}`` (the
    component matched to true t, as the FedGMI paper's table); many-to-one, ``c{j}>p{t}``
    (learned j, mapped to true t)."""
    mapping = np.asarray(mapping)
    if is_one_to_one(mapping):
        return [f"c{t}" for t in range(len(mapping))]
    return [f"c{j}>p{mapping[j]}" for j in learned_order(mapping)]


def learned_groups(mapping: np.ndarray, num_components: int) -> list[np.ndarray]:
    """For each true t < ``num_components`` (K_true), the (|J_t|,) learned components mapped to it
    (empty when none is)."""
    mapping = np.asarray(mapping)
    return [np.flatnonzero(mapping == t) for t in range(num_components)]


def assignment_accuracy(true: np.ndarray, pred: np.ndarray, mapping: np.ndarray) -> float:
    """Fraction of samples whose assigned component, mapped to a true one, is their own.

    Args:
        true: (N,) int true components.
        pred: (N,) int assigned learned components.
        mapping: (K_learned,) learned -> true, from :func:`match_components`.
    """
    true = np.asarray(true)
    if true.size == 0:
        raise ValueError("assignment_accuracy needs at least one sample")
    return float(np.mean(np.asarray(mapping)[np.asarray(pred)] == true))


def normalized_mutual_info(true: np.ndarray, pred: np.ndarray) -> float:
    """Normalised mutual information of assignments and true components (arithmetic mean
    normalisation, scikit-learn's default); invariant to relabelling, so no matching, and
    defined for any K_learned."""
    return float(normalized_mutual_info_score(np.asarray(true), np.asarray(pred)))


def aggregate_proportions(estimated: np.ndarray, mapping: np.ndarray, num_components: int) -> np.ndarray:
    """Estimated proportions by TRUE component: column t is the sum of the estimated pi over the
    learned components mapped to t (0 where none is; a column permutation when one-to-one).

    Args:
        estimated: (C, K_learned) estimated proportions, columns by learned component.
        mapping: (K_learned,) learned -> true.
        num_components: K_true.

    Returns:
        (C, K_true) float64.
    """
    estimated, mapping = np.asarray(estimated, dtype=np.float64), np.asarray(mapping)
    if estimated.ndim != 2 or estimated.shape[1] != len(mapping):
        raise ValueError(f"estimated {estimated.shape} has not one column per mapped component ({len(mapping)})")
    aligned = np.zeros((estimated.shape[0], num_components))
    np.add.at(aligned.T, mapping, estimated.T)  # column j adds to true component mapping[j]
    return aligned


def proportion_errors(
    estimated: np.ndarray, true: np.ndarray, mapping: np.ndarray
) -> tuple[np.ndarray, float, float]:
    """Total-variation distance between estimated and true mixture proportions, per client.

    TV_c = 0.5 * || pi_hat_c - pi_c ||_1 with pi_hat_c summed by true component through
    ``mapping`` (:func:`aggregate_proportions`; the DESIGN's proportion error; 0 is perfect,
    1 is disjoint).

    Args:
        estimated: (C, K_learned) estimated proportions, columns indexed by learned component.
        true: (C, K_true) true proportions, columns indexed by true component.
        mapping: (K_learned,) learned -> true.

    Returns:
        ``(tv, mean, max)``: (C,) per-client TV distances, their mean and their maximum.
    """
    true = np.asarray(true, dtype=np.float64)
    estimated = np.asarray(estimated, dtype=np.float64)
    if estimated.shape[0] != true.shape[0]:
        raise ValueError(f"estimated {estimated.shape} and true {true.shape} have different numbers of clients")
    aligned = aggregate_proportions(estimated, mapping, true.shape[1])
    tv = 0.5 * np.abs(aligned - true).sum(axis=1)
    return tv, float(tv.mean()), float(tv.max())


def component_accuracy_extremes(table: np.ndarray, mapping: np.ndarray) -> tuple[float, float]:
    """Smallest "diagonal" and largest "off-diagonal" entry of a component-by-distribution table
    under a (possibly many-to-one) map.

    Args:
        table: (K_true, K_learned) accuracy of learned j's head (column) on true t's data (row).
        mapping: (K_learned,) learned -> true.

    Returns:
        ``(diag_min, offdiag_max)``: min over learned j of ``table[mapping[j], j]`` and max over j
        and t != mapping[j] of ``table[t, j]`` (NaN when there is no such entry; NaN entries
        propagate, as for a method without a mixture). One-to-one, these are the diagonal and
        off-diagonal of the matched (K, K) table.
    """
    table, mapping = np.asarray(table, dtype=np.float64), np.asarray(mapping)
    own = np.zeros(table.shape, dtype=bool)
    own[mapping, np.arange(len(mapping))] = True
    diag, off = table[own], table[~own]
    return (float(diag.min()) if diag.size else float("nan"),
            float(off.max()) if off.size else float("nan"))


def nats_to_bits_per_dim(nats: float, num_dims: int) -> float:
    """Convert a negative log-likelihood in nats per sample to bits per dimension:
    ``nats / (num_dims * ln 2)``."""
    return float(nats) / (num_dims * math.log(2.0))
