import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, normalized_mutual_info_score

from fedgmi.metrics import (
    aggregate_proportions,
    assignment_accuracy,
    component_accuracy_extremes,
    confusion_matrix,
    is_one_to_one,
    learned_groups,
    learned_of_true,
    learned_order,
    match_components,
    matched_column_names,
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


def samples_of(counts):
    """(true, pred) sample arrays with ``counts[t, j]`` samples of true t assigned to learned j."""
    true, pred = [], []
    for (t, j), n in np.ndenumerate(np.asarray(counts)):
        true += [t] * n
        pred += [j] * n
    return np.array(true), np.array(pred)


# rows true t, columns learned j; t0's most used component is j1, but j1 holds more of t1
COUNTS = np.array([[4, 5, 0, 0, 0],
                   [0, 6, 4, 0, 0],
                   [1, 0, 0, 2, 0]])


def test_confusion_matrix_is_true_by_learned():
    true, pred = samples_of(COUNTS)
    np.testing.assert_array_equal(confusion_matrix(true, pred, 3, 5), COUNTS)


def test_many_to_one_map_takes_each_learned_components_majority_true_component():
    true, pred = samples_of(COUNTS)
    mapping = match_components(true, pred, 3, 5)
    # j4 has no sample: without proportions it goes to the most frequent true component (t1)
    assert mapping.tolist() == [0, 1, 1, 2, 1]
    assert not is_one_to_one(mapping)
    assert assignment_accuracy(true, pred, mapping) == pytest.approx((4 + 6 + 4 + 2) / 22)
    with pytest.raises(ValueError, match="not one-to-one"):
        learned_of_true(mapping)
    assert learned_order(mapping).tolist() == [0, 1, 2, 4, 3]
    assert matched_column_names(mapping) == ["c0>p0", "c1>p1", "c2>p1", "c4>p1", "c3>p2"]
    assert [g.tolist() for g in learned_groups(mapping, 3)] == [[0], [1, 2, 4], [3]]


def test_an_empty_learned_component_maps_by_its_proportions_overlap():
    true, pred = samples_of(COUNTS)
    true_pi = np.array([[0.7, 0.1, 0.2], [0.1, 0.2, 0.7], [0.3, 0.6, 0.1]])
    est = np.full((3, 5), 0.1)
    est[:, 4] = [0.15, 0.6, 0.05]  # tracks true component 2 across the clients
    assert match_components(true, pred, 3, 5, est, true_pi)[4] == 2


def test_fewer_learned_than_true_components():
    true = np.array([0, 0, 1, 1, 2, 2, 2])
    pred = np.array([0, 0, 0, 1, 1, 1, 1])
    mapping = match_components(true, pred, 3, 2)
    assert mapping.tolist() == [0, 2]
    assert assignment_accuracy(true, pred, mapping) == pytest.approx(5 / 7)
    est = np.array([[0.8, 0.2], [0.3, 0.7]])
    true_pi = np.array([[0.5, 0.3, 0.2], [0.2, 0.1, 0.7]])
    tv, mean, worst = proportion_errors(est, true_pi, mapping)
    # client 0: aligned (0.8, 0, 0.2) -> 0.5 (0.3 + 0.3 + 0); client 1: (0.3, 0, 0.7) -> 0.5 (0.1 + 0.1)
    np.testing.assert_allclose(tv, [0.3, 0.1])
    assert mean == pytest.approx(0.2) and worst == pytest.approx(0.3)


def test_proportions_are_summed_over_the_learned_components_of_each_true_one():
    est = np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.0, 0.25, 0.25]])
    mapping = np.array([2, 0, 0, 1])
    np.testing.assert_allclose(aggregate_proportions(est, mapping, 3), [[0.5, 0.4, 0.1], [0.25, 0.25, 0.5]])
    true_pi = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
    tv, _, _ = proportion_errors(est, true_pi, mapping)
    np.testing.assert_allclose(tv, [0.1, 0.25])
    with pytest.raises(ValueError, match="column"):
        proportion_errors(est[:, :3], true_pi, mapping)


def test_component_accuracy_extremes_under_a_many_to_one_map():
    table = np.array([[0.9, 0.2, 0.6, 0.1],
                      [0.3, 0.8, 0.7, 0.05],
                      [0.0, 0.4, 0.1, 0.95]])
    mapping = np.array([0, 1, 1, 2])
    diag_min, offdiag_max = component_accuracy_extremes(table, mapping)
    assert diag_min == pytest.approx(0.7)  # min(0.9, 0.8, 0.7, 0.95): table[1, 2], not table[2, 2]
    assert offdiag_max == pytest.approx(0.6)  # table[0, 2]
    assert math.isnan(component_accuracy_extremes(np.array([[0.5]]), np.array([0]))[1])


def test_component_accuracy_extremes_one_to_one_are_the_matched_tables_diagonal_and_rest():
    rng = np.random.default_rng(1)
    table = rng.random((4, 4))
    mapping = np.array([2, 0, 3, 1])
    matched = table[:, learned_of_true(mapping)]
    diag_min, offdiag_max = component_accuracy_extremes(table, mapping)
    assert diag_min == np.diag(matched).min()
    assert offdiag_max == matched[~np.eye(4, dtype=bool)].max()
    assert matched_column_names(mapping) == ["c0", "c1", "c2", "c3"]
