import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, normalized_mutual_info_score

from fedgmi.metrics import (
    assignment_accuracy,
    learned_of_true,
    match_components,
    nats_to_bits_per_dim,
    proportion_errors,
    score_mixture,
)


def test_matching_recovers_a_permutation_and_accuracy_matches_sklearn():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 3, size=500)
    perm = np.array([2, 0, 1])  # true t is called learned perm[t]
    pred = perm[true].copy()
    noisy = rng.random(500) < 0.1
    pred[noisy] = rng.integers(0, 3, size=noisy.sum())
    mapping = match_components(true, pred, 3)
    np.testing.assert_array_equal(mapping[perm], np.arange(3))
    np.testing.assert_array_equal(learned_of_true(mapping), perm)  # true t -> learned perm[t]
    expected = accuracy_score(true, mapping[pred])
    assert assignment_accuracy(true, pred, mapping) == pytest.approx(expected)
    assert 0.88 < expected < 0.97


def test_matching_is_one_to_one_even_when_one_learned_component_takes_everything():
    true = np.array([0, 0, 1, 1, 2, 2])
    pred = np.zeros(6, dtype=int)
    mapping = match_components(true, pred, 3)
    assert sorted(mapping.tolist()) == [0, 1, 2]
    assert assignment_accuracy(true, pred, mapping) == pytest.approx(2 / 6)


def test_proportion_errors_by_hand():
    true = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    est_true_order = np.array([[0.4, 0.5, 0.1], [0.9, 0.05, 0.05]])
    mapping = np.array([1, 2, 0])  # learned j -> true mapping[j]
    estimated = np.empty_like(est_true_order)
    estimated[:, [0, 1, 2]] = est_true_order[:, mapping]
    tv, mean, worst = proportion_errors(estimated, true, mapping)
    np.testing.assert_allclose(tv, [0.1, 0.1])
    assert mean == pytest.approx(0.1) and worst == pytest.approx(0.1)


def test_score_mixture_matches_sklearn_nmi_and_uses_one_mapping():
    true = np.array([0, 0, 1, 1, 2, 2, 2])
    pred = np.array([1, 1, 2, 2, 0, 0, 1])
    scores = score_mixture(true, pred, np.eye(3)[[1, 2]], np.eye(3)[[0, 1]])
    assert scores.nmi == pytest.approx(normalized_mutual_info_score(true, pred))
    assert scores.mapping.tolist() == [2, 0, 1]
    assert scores.assignment_accuracy == pytest.approx(6 / 7)
    assert scores.proportion_error_tv == pytest.approx(0.0)


def test_bits_per_dim():
    assert nats_to_bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0)
