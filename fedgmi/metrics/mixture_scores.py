"""Scores of an inferred mixture against the true one.

Learned components are unlabelled: component j of the model may have specialised to any true
inherent distribution. Every matched score therefore uses ONE matching of learned to true
components, found by the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) on the
confusion matrix of sample assignments, and reports it with the results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import confusion_matrix as _sk_confusion_matrix
from sklearn.metrics import normalized_mutual_info_score


def confusion_matrix(true: np.ndarray, pred: np.ndarray, num_components: int) -> np.ndarray:
    """Counts of (true component, assigned component) pairs.

    Args:
        true: (N,) int true component of each sample.
        pred: (N,) int learned component each sample is assigned to.
        num_components: K.

    Returns:
        (K, K) int64 matrix ``M[t, j]`` = number of samples of true component t assigned to j.
    """
    labels = np.arange(num_components)
    return _sk_confusion_matrix(np.asarray(true), np.asarray(pred), labels=labels).astype(np.int64)


def match_components(true: np.ndarray, pred: np.ndarray, num_components: int) -> np.ndarray:
    """Match learned to true components by maximum agreement (Hungarian algorithm).

    Args:
        true: (N,) int true components.
        pred: (N,) int assigned learned components.
        num_components: K.

    Returns:
        (K,) int64 ``mapping`` with ``mapping[j]`` = the true component matched to learned j.
    """
    counts = confusion_matrix(true, pred, num_components)
    true_idx, learned_idx = linear_sum_assignment(counts, maximize=True)
    mapping = np.empty(num_components, dtype=np.int64)
    mapping[learned_idx] = true_idx
    return mapping


def learned_of_true(mapping: np.ndarray) -> np.ndarray:
    """Invert a matching: (K,) ``learned_of_true[t]`` = the learned component matched to true t
    (``mapping[j]`` = the true component of learned j)."""
    return np.argsort(np.asarray(mapping))


def assignment_accuracy(true: np.ndarray, pred: np.ndarray, mapping: np.ndarray) -> float:
    """Fraction of samples whose assigned component, mapped to a true one, is their own.

    Args:
        true: (N,) int true components.
        pred: (N,) int assigned learned components.
        mapping: (K,) learned -> true, from :func:`match_components`.
    """
    true = np.asarray(true)
    if true.size == 0:
        raise ValueError("assignment_accuracy needs at least one sample")
    return float(np.mean(np.asarray(mapping)[np.asarray(pred)] == true))


def normalized_mutual_info(true: np.ndarray, pred: np.ndarray) -> float:
    """Normalised mutual information of assignments and true components (arithmetic mean
    normalisation, scikit-learn's default); invariant to relabelling, so no matching."""
    return float(normalized_mutual_info_score(np.asarray(true), np.asarray(pred)))


def proportion_errors(
    estimated: np.ndarray, true: np.ndarray, mapping: np.ndarray
) -> tuple[np.ndarray, float, float]:
    """Total-variation distance between estimated and true mixture proportions, per client.

    TV_c = 0.5 * || pi_hat_c - pi_c ||_1 after re-indexing the learned components by
    ``mapping`` (the DESIGN's proportion error; 0 is perfect, 1 is disjoint).

    Args:
        estimated: (C, K) estimated proportions, columns indexed by learned component.
        true: (C, K) true proportions, columns indexed by true component.
        mapping: (K,) learned -> true.

    Returns:
        ``(tv, mean, max)``: (C,) per-client TV distances, their mean and their maximum.
    """
    estimated, true = np.asarray(estimated, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if estimated.shape != true.shape:
        raise ValueError(f"estimated {estimated.shape} and true {true.shape} shapes differ")
    aligned = np.zeros_like(estimated)
    aligned[:, np.asarray(mapping)] = estimated  # column j moves to true component mapping[j]
    tv = 0.5 * np.abs(aligned - true).sum(axis=1)
    return tv, float(tv.mean()), float(tv.max())


def nats_to_bits_per_dim(nats: float, num_dims: int) -> float:
    """Convert a negative log-likelihood in nats per sample to bits per dimension:
    ``nats / (num_dims * ln 2)``."""
    return float(nats) / (num_dims * math.log(2.0))


@dataclass(frozen=True)
class MixtureScores:
    """The matched mixture scores of one evaluation (see :func:`score_mixture`)."""

    assignment_accuracy: float
    nmi: float
    proportion_error_tv: float
    proportion_error_max: float
    mapping: np.ndarray  # (K,) learned -> true


def score_mixture(
    true_z: np.ndarray,
    pred_z: np.ndarray,
    estimated_pi: np.ndarray,
    true_pi: np.ndarray,
) -> MixtureScores:
    """Score assignments and proportions with one Hungarian matching.

    Args:
        true_z: (N,) true components of all evaluated samples (all clients concatenated).
        pred_z: (N,) most probable learned component of each sample.
        estimated_pi: (C, K) estimated mixture proportions.
        true_pi: (C, K) true mixture proportions.
    """
    num_components = true_pi.shape[1]
    mapping = match_components(true_z, pred_z, num_components)
    _, tv_mean, tv_max = proportion_errors(estimated_pi, true_pi, mapping)
    return MixtureScores(
        assignment_accuracy=assignment_accuracy(true_z, pred_z, mapping),
        nmi=normalized_mutual_info(true_z, pred_z),
        proportion_error_tv=tv_mean,
        proportion_error_max=tv_max,
        mapping=mapping,
    )
