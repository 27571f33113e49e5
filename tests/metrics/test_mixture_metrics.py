"""The torchmetrics Metrics against the reference numpy functions on the same inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgmi.metrics import (
    AssignmentAccuracy,
    ComponentConfusion,
    ComponentMatching,
    NormalizedMutualInfo,
    ProportionError,
    assignment_accuracy,
    confusion_matrix,
    match_components,
    normalized_mutual_info,
    proportion_errors,
    score_mixture,
)


@st.composite
def federations(draw, dyadic: bool = False):
    """Clients with true/assigned components per sample and estimated/true proportions.

    ``dyadic``: proportions are multiples of 1/8, so every sum the metrics form is exact in
    float64 whatever its order (then chunked updates must equal the reference bit for bit).
    """
    k_true = draw(st.integers(1, 5))
    k_learned = draw(st.integers(1, 6))
    num_clients = draw(st.integers(1, 8))
    sizes = draw(st.lists(st.integers(0, 40), min_size=num_clients, max_size=num_clients))
    true = [np.array(draw(st.lists(st.integers(0, k_true - 1), min_size=n, max_size=n)), dtype=np.int64)
            for n in sizes]
    pred = [np.array(draw(st.lists(st.integers(0, k_learned - 1), min_size=n, max_size=n)), dtype=np.int64)
            for n in sizes]

    def simplex(k: int) -> np.ndarray:
        if dyadic:
            counts = np.array(draw(st.lists(st.integers(0, 8), min_size=k, max_size=k)), dtype=np.float64)
            return counts / 8.0
        raw = np.array(draw(st.lists(st.floats(0.0, 1.0), min_size=k, max_size=k)))
        return raw / raw.sum() if raw.sum() > 0 else np.full(k, 1.0 / k)

    estimated = np.stack([simplex(k_learned) for _ in range(num_clients)])
    truth = np.stack([simplex(k_true) for _ in range(num_clients)])
    return k_true, k_learned, true, pred, estimated, truth


def _metrics(k_true: int, k_learned: int, mapping=None):
    return {
        "confusion": ComponentConfusion(k_true, k_learned),
        "matching": ComponentMatching(k_true, k_learned),
        "accuracy": AssignmentAccuracy(k_true, k_learned, mapping=mapping),
        "nmi": NormalizedMutualInfo(k_true, k_learned),
    }


def _update(metrics: dict, true: np.ndarray, pred: np.ndarray, estimated: np.ndarray, truth: np.ndarray) -> None:
    t, p = torch.from_numpy(true), torch.from_numpy(pred)
    metrics["confusion"].update(t, p)
    metrics["matching"].update(t, p, torch.from_numpy(estimated), torch.from_numpy(truth))
    metrics["accuracy"].update(t, p)
    metrics["nmi"].update(t, p)


def _assert_match_reference(metrics: dict, k_true, k_learned, true, pred, estimated, truth) -> None:
    mapping = match_components(true, pred, k_true, k_learned, estimated, truth)
    np.testing.assert_array_equal(metrics["confusion"].compute().numpy(),
                                  confusion_matrix(true, pred, k_true, k_learned))
    np.testing.assert_array_equal(metrics["matching"].compute().reshape(-1).numpy(), mapping)
    assert metrics["nmi"].compute().item() == normalized_mutual_info(true, pred)
    if len(true):
        assert metrics["accuracy"].compute().item() == assignment_accuracy(true, pred, mapping)
    else:
        with pytest.raises(ValueError, match="at least one sample"):
            metrics["accuracy"].compute()


@settings(max_examples=150, deadline=None)
@given(federations())
def test_one_update_equals_the_reference_functions_bit_for_bit(federation) -> None:
    k_true, k_learned, true, pred, estimated, truth = federation
    true, pred = np.concatenate(true), np.concatenate(pred)
    metrics = _metrics(k_true, k_learned)
    _update(metrics, true, pred, estimated, truth)
    _assert_match_reference(metrics, k_true, k_learned, true, pred, estimated, truth)

    mapping = match_components(true, pred, k_true, k_learned, estimated, truth)
    _, tv_mean, tv_max = proportion_errors(estimated, truth, mapping)
    for reduction, want in (("mean", tv_mean), ("max", tv_max)):
        metric = ProportionError(torch.from_numpy(mapping), k_true, reduction)
        metric.update(torch.from_numpy(estimated), torch.from_numpy(truth))
        assert metric.compute().item() == want
    if len(true):
        scores = score_mixture(true, pred, estimated, truth)
        assert (scores.assignment_accuracy, scores.nmi, scores.proportion_error_tv, scores.proportion_error_max) \
            == (assignment_accuracy(true, pred, mapping), normalized_mutual_info(true, pred), tv_mean, tv_max)
        np.testing.assert_array_equal(scores.mapping, mapping)


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")  # merged, never updated
@settings(max_examples=150, deadline=None)
@given(federations(dyadic=True))
def test_one_update_per_client_equals_the_reference_on_everything(federation) -> None:
    """Accumulated client by client (exact sums: dyadic proportions) and merged as a server
    merges its clients' states."""
    k_true, k_learned, true, pred, estimated, truth = federation
    all_true, all_pred = np.concatenate(true), np.concatenate(pred)
    mapping = match_components(all_true, all_pred, k_true, k_learned, estimated, truth)
    _, tv_mean, tv_max = proportion_errors(estimated, truth, mapping)

    server = _metrics(k_true, k_learned)
    tv = {r: ProportionError(mapping, k_true, r) for r in ("mean", "max")}
    for c in range(len(true)):
        client = _metrics(k_true, k_learned)  # each client's own states, merged by the server
        _update(client, true[c], pred[c], estimated[c:c + 1], truth[c:c + 1])
        for name, metric in server.items():
            metric.merge_state(client[name])
        for metric in tv.values():
            metric.update(estimated[c:c + 1], truth[c:c + 1])
    _assert_match_reference(server, k_true, k_learned, all_true, all_pred, estimated, truth)
    assert tv["mean"].compute().item() == tv_mean and tv["max"].compute().item() == tv_max


@settings(max_examples=60, deadline=None)
@given(federations())
def test_per_client_proportion_errors_equal_the_reference_to_float_rounding(federation) -> None:
    k_true, k_learned, true, pred, estimated, truth = federation
    mapping = match_components(np.concatenate(true), np.concatenate(pred), k_true, k_learned, estimated, truth)
    _, tv_mean, _ = proportion_errors(estimated, truth, mapping)
    metric = ProportionError(mapping, k_true)
    for c in range(len(truth)):
        metric.update(estimated[c:c + 1], truth[c:c + 1])
    assert metric.compute().item() == pytest.approx(tv_mean, rel=1e-12, abs=1e-15)


def test_a_fixed_map_scores_other_assignments_through_it() -> None:
    true = torch.tensor([0, 0, 1, 1, 2, 2])
    pred = torch.tensor([2, 2, 0, 0, 1, 1])  # learned j = true (j + 1) mod 3
    own = AssignmentAccuracy(3)
    own.update(true, pred)
    assert own.compute().item() == 1.0
    identity = AssignmentAccuracy(3, mapping=[0, 1, 2])
    identity.update(true, pred)
    assert identity.compute().item() == 0.0
    assert assignment_accuracy(true.numpy(), pred.numpy(), np.arange(3)) == 0.0


def test_many_to_one_map_uses_the_proportions_for_an_empty_learned_component() -> None:
    true, pred = torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1])  # learned 2 gets no sample
    estimated = torch.tensor([[0.5, 0.0, 0.5], [0.0, 1.0, 0.0]], dtype=torch.float64)
    truth = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    with_pi = ComponentMatching(2, 3)
    with_pi.update(true, pred, estimated, truth)
    assert with_pi.compute().tolist() == [0, 1, 0]  # learned 2 overlaps true 0's clients
    without = ComponentMatching(2, 3)
    without.update(true, pred)
    assert without.compute().tolist() == [0, 1, 0]  # the most frequent true component
    swapped = ComponentMatching(2, 3)
    swapped.update(true, pred, estimated, truth[:, [1, 0]])
    assert swapped.compute().tolist()[2] == 1


def test_states_declare_their_reductions_and_are_not_differentiable() -> None:
    matching = ComponentMatching(3, 4)
    assert matching._reductions.keys() == {"confusion", "overlap", "proportion_rows"}
    tv = ProportionError([0, 1, 2], 3)
    assert tv._reductions.keys() == {"tv_sum", "tv_max", "num_clients"}
    assert not matching.is_differentiable and AssignmentAccuracy.higher_is_better
    assert ProportionError.higher_is_better is False
    matching.update(torch.tensor([0, 1]), torch.tensor([3, 1]))
    matching.reset()
    assert int(matching.confusion.sum()) == 0


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: ComponentConfusion(0), "num_components = 0"),
        (lambda: ComponentConfusion(3, 2.5), "num_learned = 2.5"),
        (lambda: ComponentConfusion(3).update(torch.tensor([0, 3]), torch.tensor([0, 1])), "outside [0, 3)"),
        (lambda: ComponentConfusion(3).update(torch.tensor([0.0]), torch.tensor([0])), "integer tensor"),
        (lambda: ComponentConfusion(3).update(torch.tensor([0, 1]), torch.tensor([0])), "differ in length"),
        (lambda: ComponentMatching(2).update(torch.tensor([0]), torch.tensor([0]), torch.ones(1, 2)),
         "give both or neither"),
        (lambda: ComponentMatching(2).update(torch.tensor([0]), torch.tensor([0]), torch.ones(1, 3), torch.ones(1, 2)),
         "allowed: (C, 2)"),
        (lambda: AssignmentAccuracy(3, mapping=[0, 1]), "mapping [0, 1]"),
        (lambda: ProportionError([0, 5], 3), "mapping [0, 5]"),
        (lambda: ProportionError([0, 1], 2, "median"), "reduction = 'median'"),
        (lambda: ProportionError([0, 1], 2).compute(), "at least one client"),
    ],
)
@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_bad_input_is_one_clear_value_error(call, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        call()
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_nan_proportions_give_nan_errors_as_the_reference() -> None:
    estimated = np.full((2, 2), np.nan)
    truth = np.array([[1.0, 0.0], [0.5, 0.5]])
    metric = ProportionError([0, 1], 2)
    metric.update(estimated, truth)
    assert math.isnan(metric.compute().item())
