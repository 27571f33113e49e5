"""FedSoft: importances by hand; lambda = 0 with one cluster is FedAvg; one model goes up."""

import json
from pathlib import Path

import pytest
import torch

from fedgmi.algorithms.fedavg import FedAvg
from fedgmi.algorithms.fedsoft import FedSoft, importance_weights
from fedgmi.cli import main
from tests.helpers import run_client


def test_importance_is_the_share_of_samples_each_cluster_fits_best():
    evidence = torch.tensor([[-1.0, -2.0, -3.0], [-0.1, -0.2, -5.0], [-4.0, -1.0, -2.0], [-2.0, -3.0, -1.0]])
    torch.testing.assert_close(importance_weights(evidence, 0.0), torch.tensor([0.5, 0.25, 0.25]))
    floored = importance_weights(torch.tensor([[0.0, -1.0, -1.0]]), 0.1)  # share (1, 0, 0) -> floor
    torch.testing.assert_close(floored, torch.tensor([1.0, 0.1, 0.1]) / 1.2)


def one_round(strategy, scenario, ids, rnd=0):
    """Configure, run every task as the loop does, aggregate; returns (tasks, replies)."""
    tasks = strategy.configure_round(rnd, ids)
    replies = [run_client(strategy, t, scenario.clients[t.client_id]) for t in tasks]
    strategy.aggregate(rnd, replies)
    return tasks, replies


def test_fedsoft_with_lambda_zero_and_one_cluster_trains_as_fedavg_and_averages_uniformly(make_peer, small_scenario):
    soft = make_peer(FedSoft, num_components=1, proximal_weight=0.0, local_epochs=2)
    avg = make_peer(FedAvg, local_epochs=2)
    start = soft.global_state[0].clone()
    torch.testing.assert_close(start, avg.global_state[0])
    tasks, soft_replies = one_round(soft, small_scenario, [0, 2, 3])
    assert [t.client_id for t in tasks] == [0, 2, 3]
    _, avg_replies = one_round(avg, small_scenario, [0, 2, 3])
    for s, a in zip(soft_replies, avg_replies):  # the same local training as FedAvg's clients
        torch.testing.assert_close(s.updates[0], a.updates[0], rtol=1e-5, atol=1e-6)
    # the official code's server: the uniform mean of the drawn clients' models
    expected = start + torch.stack([r.updates[0] for r in soft_replies]).mean(0)
    torch.testing.assert_close(soft.global_state[0], expected, rtol=1e-5, atol=1e-6)


def test_fedsoft_all_clients_rule_weighs_by_importance_times_size_over_every_client(make_peer, small_scenario):
    n_total = sum(len(c.x_train) for c in small_scenario.clients)
    soft = make_peer(FedSoft, num_components=1, proximal_weight=0.0, local_epochs=1,
                     aggregation="all_clients", train_examples=n_total)
    start = soft.global_state[0].clone()
    _, replies = one_round(soft, small_scenario, [0, 2, 3])
    # one cluster: v_c = n_c; unsampled clients count with their unchanged copy
    expected = start + sum(r.num_examples * r.updates[0] for r in replies) / n_total
    torch.testing.assert_close(soft.global_state[0], expected, rtol=1e-5, atol=1e-6)


def test_fedsoft_sends_all_centres_down_and_one_model_and_its_importances_up(make_peer, small_scenario):
    strategy = make_peer(FedSoft, local_epochs=1)
    tasks = strategy.configure_round(0, list(range(6)))
    assert len(tasks) >= 2 and all(strategy.selected[t.client_id] for t in tasks)
    reply = run_client(strategy, tasks[0], small_scenario.clients[tasks[0].client_id])
    p = tasks[0].global_state[0].numel()
    assert tasks[0].bytes_down == 3 * 4 * p and reply.bytes_up == 4 * p + 4 + 3 * 4
    assert len(reply.updates) == len(reply.aggregation_weights) == 1
    assert reply.statistics["importances"].sum().item() == pytest.approx(1.0)


def test_fedsoft_server_records_survive_a_checkpoint(make_peer, small_scenario):
    strategy = make_peer(FedSoft, local_epochs=1)
    one_round(strategy, small_scenario, list(range(6)))
    restored = make_peer(FedSoft, local_epochs=1)
    restored.load_state_dict(strategy.state_dict())
    assert restored.sizes == strategy.sizes and restored.sizes
    for c, u in strategy.importances.items():
        assert torch.equal(restored.importances[c], u)
    assert [t.client_id for t in restored.configure_round(1, list(range(6)))] == \
        [t.client_id for t in strategy.configure_round(1, list(range(6)))]


def test_fedsoft_config_runs_end_to_end_from_the_command_line(mnist_data_dir, tmp_path, monkeypatch):
    """The user's command that crashed in round 0 (one update against K weights)."""
    monkeypatch.setenv("FEDGMI_DATA_DIR", str(mnist_data_dir))
    config = Path(__file__).resolve().parents[2] / "configs" / "pm_mnist_fedsoft.yaml"
    out = tmp_path / "run"
    assert main(["fit", "--config", str(config), "--federation.rounds", "2", "--scenario.num_clients", "6",
                 "--algorithm.init_args.local_epochs", "1", "--output_dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rounds"] == 2 and metrics["rounds_skipped"] == 0 and metrics["bytes_up_rounds"] > 0
