"""The round loop with failing, broken and malicious clients (real digits data, small FedGMI)."""

import dataclasses

import pytest
import torch

from fedgmi.errors import ConfigError
from fedgmi.federated.evaluation import EvalConfig
from fedgmi.federated.messages import ContractError
from fedgmi.federated.server import (
    FederationConfig,
    LoopState,
    StopRequested,
    TrainingDiverged,
    run_federation,
    run_round,
)
from tests.helpers import digits_scenario, make_fedgmi


@pytest.fixture(scope="module")
def scenario(digits_base):
    return digits_scenario(digits_base, num_clients=6)


def one_round(strategy, scenario, corrupt=None, **fed):
    """Run round 0 over every client; ``corrupt`` maps a client id to a reply transform (or
    to an exception to raise). Returns (round metrics, loop state, warnings)."""
    original, warnings, state = strategy.client_update, [], LoopState()

    def client_update(task, data, client_state):
        change = (corrupt or {}).get(task.client_id)
        if isinstance(change, Exception):
            raise change
        reply, new_state = original(task, data, client_state)
        return (change(reply) if change else reply), new_state

    strategy.client_update = client_update
    cfg = FederationConfig(rounds=1, client_fraction=1.0, **fed)
    metrics = run_round(strategy, scenario, cfg, 0, 0, list(range(len(scenario.clients))), state, warnings.append)
    return metrics, state, warnings


def with_updates(transform):
    def change(reply):
        updates = tuple(None if u is None else transform(u) for u in reply.updates)
        return dataclasses.replace(reply, updates=updates)
    return change


@pytest.mark.parametrize("transform", [lambda u: u * float("nan"), lambda u: u * 1e6],
                         ids=["nan", "scaled-1e6"])
def test_a_broken_update_leaves_the_global_model_as_without_that_client(scenario, transform):
    without = make_fedgmi(scenario, local_epochs=1)
    _, state, _ = one_round(without, scenario, {2: RuntimeError("client 2 is offline")})
    assert state.clients_failed == 1 and state.clients_rejected == 0
    broken = make_fedgmi(scenario, local_epochs=1)
    _, state, warnings = one_round(broken, scenario, {2: with_updates(transform)})
    assert state.clients_rejected == 1 and state.clients_failed == 0
    assert any("client 2 rejected" in w for w in warnings)
    for a, b in zip(without.global_state, broken.global_state):
        assert torch.equal(a, b)
    honest = make_fedgmi(scenario, local_epochs=1)  # and the broken client did matter
    one_round(honest, scenario)
    assert any(not torch.equal(a, b) for a, b in zip(honest.global_state, broken.global_state))


def test_too_few_replies_keep_the_global_state_and_say_so(scenario):
    strategy = make_fedgmi(scenario, local_epochs=1)
    before = [t.clone() for t in strategy.global_state]
    failing = {c: RuntimeError("gone") for c in range(4)}
    metrics, state, warnings = one_round(strategy, scenario, failing, min_clients=3)
    assert "train_neg_elbo" not in metrics and state.rounds_skipped == 1 and state.clients_failed == 4
    assert any("min_clients = 3" in w for w in warnings)
    assert all(torch.equal(a, b) for a, b in zip(before, strategy.global_state))


def test_dropout_counts_failed_clients_and_every_client_raising_is_a_bug(scenario):
    strategy = make_fedgmi(scenario, local_epochs=1)
    _, state, _ = one_round(strategy, scenario, dropout_probability=0.5)
    assert 0 < state.clients_failed < len(scenario.clients)
    everyone = {c: KeyError("bug") for c in range(len(scenario.clients))}
    with pytest.raises(KeyError):
        one_round(make_fedgmi(scenario, local_epochs=1), scenario, everyone)


def test_a_nan_loss_stops_the_run_naming_round_and_client(scenario, monkeypatch):
    strategy = make_fedgmi(scenario, local_epochs=1)

    def nan_loss(*args, **kwargs):
        zero = sum(p.sum() for p in strategy.worker.module.parameters()) * 0
        return zero + float("nan"), zero

    monkeypatch.setattr(strategy.worker.module, "loss", nan_loss)
    with pytest.raises(TrainingDiverged, match=r"round 0, client 0: component \d, local epoch 0: loss is not finite"):
        one_round(strategy, scenario)


def test_stop_request_checkpoints_then_stops_after_the_round(scenario):
    strategy = make_fedgmi(scenario, initialize=False, local_epochs=1)
    calls = []
    cfg = FederationConfig(rounds=5, eval_every=5)
    with pytest.raises(StopRequested, match="after round 1 of 5"):
        run_federation(strategy, scenario, cfg, EvalConfig(), 0, lambda *a: None,
                       lambda done, state, stopping: calls.append((done, state.next_round, stopping)),
                       stop_requested=lambda: True, progress=False)
    assert calls == [(1, 1, True)]


def test_min_clients_above_the_clients_per_round_is_refused_before_the_run():
    cfg = FederationConfig(client_fraction=0.5, min_clients=6, unseen_fraction=0.2)
    assert FederationConfig(client_fraction=0.5).clients_per_round(20) == 10
    with pytest.raises(ConfigError, match="min_clients = 6 exceeds the 4 clients sampled per round"):
        cfg.clients_per_round(10)


def test_a_malformed_reply_stops_the_round_with_the_contract_error(scenario):
    strategy = make_fedgmi(scenario, local_epochs=1)
    original = strategy.client_update

    def one_weight_too_few(task, data, client_state):
        reply, new_state = original(task, data, client_state)
        return task.reply(reply.num_examples, reply.updates, reply.aggregation_weights[:-1]), new_state

    strategy.client_update = one_weight_too_few
    cfg = FederationConfig(rounds=1, client_fraction=1.0)
    # K = 3 components and the shared classifier body: four updates
    with pytest.raises(ContractError, match="FedGMI: ClientReply.updates has 4 entries but aggregation_weights "
                                            "has shape \\(3,\\)"):
        run_round(strategy, scenario, cfg, 0, 0, list(range(len(scenario.clients))), LoopState(), print)


def test_every_reply_reports_its_local_sample_passes_and_the_loop_sums_them(scenario):
    # shared body: a client trains its heaviest VAE (train_top_m 1) for 2 epochs and the
    # classifiers for 3, each on every kept sample
    strategy = make_fedgmi(scenario, local_epochs=2, classifier_epochs=3, train_top_m=1, warmup_rounds=1)
    replies = []
    original = strategy.aggregate
    strategy.aggregate = lambda rnd, accepted: (replies.extend(accepted), original(rnd, accepted))[1]
    _, state, _ = one_round(strategy, scenario)
    sizes = {c.client_id: len(c.x_train) for c in scenario.clients}
    for reply in replies:  # r_ik >= the weight floor keeps (nearly) every sample
        n = sizes[reply.client_id]
        assert 0.9 * n * (2 + 3) <= reply.metrics["sample_passes"] <= n * (2 + 3)
    assert state.train_sample_passes == sum(r.metrics["sample_passes"] for r in replies) > 0
