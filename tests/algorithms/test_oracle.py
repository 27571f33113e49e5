"""The Oracle sees the truth through its one hook, and scores perfectly on the mixture;
no other strategy may see the truth."""

import pytest

from fedgmi.algorithms.fedem import FedEM
from fedgmi.algorithms.oracle import Oracle
from fedgmi.federated.evaluation import EvalConfig, attach_truth, evaluate
from tests.helpers import run_client


def test_oracle_trains_each_component_on_its_true_samples_and_scores_perfectly(make_peer, small_scenario):
    strategy = make_peer(Oracle, local_epochs=1)
    attach_truth(strategy, small_scenario)
    client = small_scenario.clients[0]
    reply = run_client(strategy, strategy.configure_round(0, [0])[0], client)
    counts = small_scenario.truth.z_train[0].bincount(minlength=3).float()
    assert reply.aggregation_weights.tolist() == counts.tolist()
    m = evaluate(strategy, small_scenario, EvalConfig(), unseen=[5]).metrics
    assert m["assignment_accuracy"] == 1.0
    assert m["proportion_error_tv"] == pytest.approx(0.0, abs=1e-5)
    assert m["unseen_proportion_error_tv"] == pytest.approx(0.0, abs=1e-5)


def test_only_a_strategy_declaring_it_sees_the_truth(make_peer, small_scenario):
    strategy = make_peer(FedEM)
    attach_truth(strategy, small_scenario)  # a no-op for it
    assert not hasattr(strategy, "truth")
    with pytest.raises(RuntimeError):
        strategy.attach_ground_truth(small_scenario.truth)
    oracle = make_peer(Oracle)
    with pytest.raises(RuntimeError):
        oracle.true_components(0, "train", 10)
