"""Client steps: the pool's byte counts and views, and the evaluation's client half (a client's
reply depends on its own data and seed only, so a node computes what the simulation does, and
the true proportions leave a client only where the many-to-one map needs them)."""

from __future__ import annotations

import pytest
import torch

from fedgmi.federated.clients import (
    InProcessClients,
    NodeClient,
    client_pool,
    payload_bytes,
    scenario_clients,
)
from fedgmi.federated.evaluation import EvalConfig, _settings
from fedgmi.federated.messages import ContractError
from tests.federated.test_evaluation import GaussianMixtureStrategy, make_scenario


class Echo(GaussianMixtureStrategy):
    """A strategy with one client step: the client's training size and a sum of its inputs."""

    def client_step(self, step, request, data):
        if step != "echo":
            return super().client_step(step, request, data)
        return {"n": torch.tensor(len(data.x_train)), "sum": data.x_train.sum(0) * request["scale"]}


def test_a_pool_runs_steps_on_each_clients_own_data_and_counts_the_payload_bytes():
    scenario = make_scenario([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]], n=50)
    pool = client_pool(scenario, Echo())
    replies = pool.call("echo", {0: {}, 2: {"scale": torch.tensor(3.0)}}, {"scale": torch.tensor(2.0)})
    assert sorted(replies) == [0, 2]
    torch.testing.assert_close(replies[0]["sum"], scenario.clients[0].x_train.sum(0) * 2)
    torch.testing.assert_close(replies[2]["sum"], scenario.clients[2].x_train.sum(0) * 3)  # its own request wins
    assert pool.bytes_down == 2 * 4 + 4 and pool.bytes_up == 2 * (8 + 2 * 4) and pool.exchanges == 1
    view = pool.only([0, 1])
    view.call("echo", {1: {}}, {"scale": torch.tensor(1.0)})
    assert view.client_ids == [0, 1] and view.exchanges == 1 and pool.exchanges == 1  # counters of its own
    with pytest.raises(RuntimeError, match=r"clients \[2\] are not in this pool"):
        view.call("echo", {2: {}}, {"scale": torch.tensor(1.0)})
    with pytest.raises(ContractError, match="no client step 'unknown'"):
        pool.call("unknown", {0: {}})
    with pytest.raises(TypeError, match="ClientPool, a Scenario or a sequence"):
        client_pool(42, Echo())
    assert payload_bytes({"a": torch.zeros(3, dtype=torch.float64)}) == 24


def _evaluate_one(strategy, client, seen=True):
    request = {**_settings(EvalConfig(num_samples=2), seed=5), "seen": torch.tensor(seen)}
    return InProcessClients(strategy, [client]).call("evaluate", {client.client_id: request})[client.client_id]


def test_a_clients_evaluation_depends_on_its_own_data_only():
    """The same client alone or among others replies the same (its own generator): what a node
    holding only it computes."""
    scenario = make_scenario([[0.9, 0.1], [0.2, 0.8]], n=80)
    clients = scenario_clients(scenario)
    together = client_pool(scenario, GaussianMixtureStrategy()).call(
        "evaluate", {c: {"seen": torch.tensor(True)} for c in (0, 1)}, _settings(EvalConfig(num_samples=2), seed=5))
    alone = _evaluate_one(GaussianMixtureStrategy(), clients[1])
    assert together[1].keys() == alone.keys()
    assert all(torch.equal(together[1][k], alone[k]) for k in alone)
    assert int(alone["confusion"].sum()) == len(scenario.clients[1].x_test) == int(alone["num_test"])


def test_true_proportions_leave_a_client_only_when_the_learned_k_differs():
    scenario = make_scenario([[0.7, 0.3]], n=60)
    client = scenario_clients(scenario)[0]
    assert "overlap" not in _evaluate_one(GaussianMixtureStrategy(), client)  # K learned = K true = 2
    three = NodeClient(client.data, type(client.truth)(client.truth.z_train, client.truth.z_test,
                                                       torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), 3))
    reply = _evaluate_one(GaussianMixtureStrategy(), three)  # 2 learned components on 3 true ones
    assert reply["overlap"].shape == (3, 2)
    without_truth = _evaluate_one(GaussianMixtureStrategy(), NodeClient(client.data))
    assert set(without_truth) == {"pi", "accuracy", "num_test"}


def test_clients_without_ground_truth_get_accuracy_and_nan_ground_truth_scores():
    import math
    from types import SimpleNamespace

    from fedgmi.federated.evaluation import evaluate

    scenario = make_scenario([[0.9, 0.1], [0.2, 0.8]], n=80)
    strategy = GaussianMixtureStrategy()
    strategy.spec = SimpleNamespace(image_shape=(1, 1, 2))
    plain = evaluate(strategy, [NodeClient(c) for c in scenario.clients], EvalConfig(num_samples=2))
    full = evaluate(GaussianMixtureStrategy(), scenario, EvalConfig(num_samples=2))
    assert plain.metrics["client_accuracy_mean"] == full.metrics["client_accuracy_mean"] > 0.8
    assert all(math.isnan(plain.metrics[k]) for k in ("assignment_accuracy", "nmi", "proportion_error_tv", "test_nll"))
    assert plain.estimated_proportions.shape == (2, 2)
