"""The shared peer machinery, through its degenerate case FedAvg: byte counts against parameter
counts, aggregation, and honest (NaN) mixture metrics for a method without a mixture."""

import math

import pytest
import torch

from fedgmi.algorithms.classifier_mixture import ClassifierMixture
from fedgmi.algorithms.fedavg import FedAvg
from fedgmi.errors import ConfigError
from fedgmi.federated.evaluation import EvalConfig, evaluate
from fedgmi.models.heads import MLPClassifier
from tests.helpers import run_client


def num_params(scenario):
    return sum(p.numel() for p in MLPClassifier(scenario.image_shape, scenario.num_classes).parameters())


def test_fedavg_sends_one_model_down_and_one_delta_plus_one_weight_up(make_peer, small_scenario):
    strategy = make_peer(FedAvg, local_epochs=1)
    p = num_params(small_scenario)
    tasks = strategy.configure_round(0, [0, 1])
    replies = [run_client(strategy, t, small_scenario.clients[t.client_id]) for t in tasks]
    assert [t.bytes_down for t in tasks] == [4 * p, 4 * p]
    assert [r.bytes_up for r in replies] == [4 * p + 4, 4 * p + 4]
    n = [len(small_scenario.clients[c].x_train) for c in (0, 1)]
    assert [float(r.aggregation_weights[0]) for r in replies] == n  # FedAvg's weights n_c


def test_fedavg_aggregate_is_the_example_weighted_mean_of_client_models(make_peer, small_scenario):
    strategy = make_peer(FedAvg, local_epochs=1)
    (theta,) = strategy.global_state
    replies = [run_client(strategy, t, small_scenario.clients[t.client_id])
               for t in strategy.configure_round(0, [0, 1])]
    strategy.aggregate(0, replies)
    n0, n1 = (r.num_examples for r in replies)
    expected = theta + (n0 * replies[0].updates[0] + n1 * replies[1].updates[0]) / (n0 + n1)
    torch.testing.assert_close(strategy.global_state[0], expected)


def test_methods_without_a_mixture_report_nan_mixture_metrics(make_peer, small_scenario):
    strategy = make_peer(FedAvg, local_epochs=1)
    result = evaluate(strategy, small_scenario, EvalConfig(), unseen=[5])
    m = result.metrics
    for key in ("assignment_accuracy", "nmi", "proportion_error_tv", "unseen_proportion_error_tv", "test_nll"):
        assert math.isnan(m[key]), key
    assert 0 <= m["client_accuracy_mean"] <= 1 and 0 <= m["unseen_client_accuracy_mean"] <= 1
    assert torch.isnan(torch.as_tensor(result.estimated_proportions)).all()


def test_the_base_class_alone_has_no_e_step(make_peer, small_scenario):
    class NoEStep(ClassifierMixture):
        pass

    strategy = make_peer(NoEStep)
    with pytest.raises(NotImplementedError):
        run_client(strategy, strategy.configure_round(0, [0])[0], small_scenario.clients[0])


@pytest.mark.parametrize("kw", [{"local_epochs": 0}, {"batch_size": 2.5}, {"weight_floor": 1.0}])
def test_bad_options_are_one_line_config_errors(kw):
    with pytest.raises(ConfigError) as err:
        FedAvg(**kw)
    assert "\n" not in str(err.value) and str(next(iter(kw.values()))) in str(err.value)


def test_per_client_optimizer_state_is_kept_in_the_client_state_and_checkpointed(make_peer, small_scenario):
    from fedgmi.algorithms.fedem import FedEM

    strategy = make_peer(FedEM, local_epochs=1, optimizer_state="per_client")
    task = strategy.configure_round(0, [1])[0]
    run_client(strategy, task, small_scenario.clients[1])
    state = strategy.client_state[1]
    assert {f"optimizer.{k}.exp_avg" for k in range(3)} <= set(state) and "pi" in state
    restored = make_peer(FedEM, local_epochs=1, optimizer_state="per_client")
    restored.load_state_dict(strategy.state_dict())
    assert torch.equal(restored.client_state[1]["optimizer.2.exp_avg_sq"], state["optimizer.2.exp_avg_sq"])
    fresh = make_peer(FedEM, local_epochs=1)
    run_client(fresh, fresh.configure_round(0, [1])[0], small_scenario.clients[1])
    assert set(fresh.client_state[1]) == {"pi"}
