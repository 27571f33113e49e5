"""The ServerApp's node bookkeeping, without a network: which node serves which client (a client
claimed twice is refused) and what a node's train message holds (nothing of another node's
clients)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("flwr", reason="Flower is not installed (pip install -e \".[flower]\")")

from fedgmi.errors import ConfigError
from fedgmi.flower import wire
from fedgmi.flower.runtime import RunSettings, client_side, resolve_config
from fedgmi.flower.server_app import FlowerRounds, assign_clients

NODE_A, NODE_B = 1111, 2222


def test_each_client_is_served_by_the_node_that_claims_it() -> None:
    holder = assign_clients({}, [(NODE_A, [0, 1]), (NODE_B, ["2", 3])])
    assert holder == {0: NODE_A, 1: NODE_A, 2: NODE_B, 3: NODE_B}
    assert assign_clients(holder, [(NODE_A, [1, 0])]) == holder  # a node repeating its own claim


@pytest.mark.parametrize("earlier", [{}, {0: NODE_A, 1: NODE_A}])
def test_two_nodes_claiming_one_client_are_refused(earlier: dict[int, int]) -> None:
    """Whether both claims come in one batch of replies or the second in a later round: a
    refusal naming the client and both nodes, never a choice."""
    claims = [(NODE_B, [1, 2])] if earlier else [(NODE_A, [0, 1]), (NODE_B, [1, 2])]
    with pytest.raises(ConfigError, match=f"^client 1 is claimed by Flower nodes {NODE_A} and {NODE_B}; "):
        assign_clients(earlier, claims)


@pytest.fixture(scope="module")
def fedgmi_after_init():
    """A 4-client FedGMI on digits after its topic-model initialisation (as the server holds it)."""
    side = client_side(resolve_config("configs/pm_digits.yaml"), ("--scenario.num_clients", "4"))
    strategy = side.strategy
    strategy.client_state = dict(strategy.initialize(side.scenario.clients).client_states)
    return strategy


def test_a_node_receives_nothing_of_another_nodes_clients(fedgmi_after_init) -> None:
    """Node A (clients 0, 1) gets its clients' tasks and states and the topic model's global
    part; none of clients 2 and 3's records, proportions or states, and no (C, K) table."""
    strategy = fedgmi_after_init
    rounds = FlowerRounds(None, RunSettings(resolve_config("configs/pm_digits.yaml")))
    rounds.holder = assign_clients({}, [(NODE_A, [0, 1]), (NODE_B, [2, 3])])
    tasks = strategy.configure_round(0, [0, 1, 2, 3])
    content = rounds.node_content(strategy, NODE_A, [t for t in tasks if t.client_id in (0, 1)])
    assert wire.task_ids(content) == [0, 1]
    named = {key.split(".")[0] for key in [*content.array_records, *content.config_records] if "." in key}
    assert named == {"0", "1"}
    extra = wire.load_strategy_blob(wire.received_strategy(content))
    assert set(extra) == {"topic", "density_weight"}
    assert set(extra["topic"]) == {"centroids", "log_beta", "num_classes"}
    k = strategy.spec.num_components
    assert extra["topic"]["log_beta"].shape[0] == k and extra["topic"]["centroids"].shape[0] != 4
    sent = [a.numpy() for record in content.array_records.values() for a in record.values()]
    for cid in (2, 3):
        foreign = strategy.client_state[cid]["pi"].cpu().numpy()
        assert not any(arr.shape == foreign.shape and (arr == foreign).all() for arr in sent), cid
    assert strategy.topic.proportions.shape == (4, k)  # the server's table, which stays there
    server_topic = strategy.topic  # what a node installs scores samples as the server's topic model does
    try:
        strategy.load_node_state(extra)
        x = torch.rand(5, server_topic.centroids.shape[1])
        assert torch.equal(strategy.topic.log_likelihood_of(x), server_topic.log_likelihood_of(x))
        assert strategy.topic.proportions.shape == (0, k)
    finally:
        strategy.topic = server_topic


@pytest.mark.parametrize("config", ["pm_digits.yaml", "pm_mnist_fedsoft.yaml", "pm_mnist_fedgengmm.yaml",
                                    "pm_mnist_fedvtc.yaml"])
def test_node_state_is_all_a_node_needs(config: str, request) -> None:
    """A node's fresh strategy given only ``node_state`` of its clients computes, for them, the
    round-0 updates and states of the server's own strategy (FedGMI: the topic model's global
    part; FedGenGMM: the mixture; FedSoft and FedVTC: nothing)."""
    overrides = ("--scenario.num_clients", "4", "--algorithm.init_args.local_epochs", "1",
                 "--fabric.accelerator", "cpu")
    if "mnist" in config:
        data = request.getfixturevalue("mnist_data_dir")
        overrides += ("--scenario.data_dir", str(data), "--scenario.download", "false",
                      "--scenario.samples_per_client", "[40, 50]")
    build = client_side.__wrapped__  # uncached: a server and a node of their own
    server = build(resolve_config(f"configs/{config}"), overrides)
    strategy = server.strategy
    strategy.client_state = dict(strategy.initialize(server.scenario.clients).client_states)
    node = build(resolve_config(f"configs/{config}"), overrides).strategy
    node.load_node_state(wire.load_strategy_blob(wire.strategy_blob(strategy.node_state([0, 1]))))
    for task in strategy.configure_round(0, [0, 1]):
        data, state = server.scenario.clients[task.client_id], strategy.client_state.get(task.client_id, {})
        (a, state_a), (b, state_b) = (s.client_update(task, data, state) for s in (strategy, node))
        assert all(torch.equal(u, v) for u, v in zip(a.updates, b.updates) if u is not None), task.client_id
        assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)


class RecordingGrid:
    """A grid that keeps the messages it is given and answers none (the step then stops)."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes, self.sent = nodes, []

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def push_messages(self, messages):
        self.sent += list(messages)
        return [str(i) for i in range(len(self.sent) - len(messages), len(self.sent))]

    def pull_messages(self, message_ids):
        return []


@pytest.mark.parametrize("step", ["topic.histogram", "evaluate"])
def test_a_client_step_message_holds_nothing_of_another_nodes_clients(fedgmi_after_init, step: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The initialisation's and the evaluation's ``query.step`` messages to node A (clients 0, 1)
    hold A's requests and client states, the shared settings, the global vectors and the topic
    model's global part; no record of clients 2 and 3 and none of their proportions."""
    from fedgmi.federated.evaluation import EvalConfig, _settings

    strategy = fedgmi_after_init
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)  # a message is built inside a Flower run
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    grid = RecordingGrid([NODE_A, NODE_B])
    rounds = FlowerRounds(grid, RunSettings(resolve_config("configs/pm_digits.yaml"), round_timeout=1.0),
                          strategy=strategy)
    rounds.holder, rounds.queried = assign_clients({}, [(NODE_A, [0, 1]), (NODE_B, [2, 3])]), {NODE_A, NODE_B}
    shared = ({"centroids": strategy.topic.centroids, "num_classes": torch.tensor(0)} if step.startswith("topic")
              else _settings(EvalConfig(), 0))
    with pytest.raises(RuntimeError, match="no reply within round-timeout"):
        rounds.call(step, {c: {"seen": torch.tensor(True)} for c in range(4)}, shared)
    to_a = next(m for m in grid.sent if m.metadata.dst_node_id == NODE_A)
    assert to_a.metadata.message_type == "query.step"
    content = to_a.content
    named = {key.split(".")[0] for key in [*content.array_records, *content.config_records] if "." in key}
    assert named == {"0", "1"} and content.config_records["step"]["client-ids"] == [0, 1]
    assert (wire.GLOBAL in content.array_records) == (step == "evaluate")
    sent = [a.numpy() for record in content.array_records.values() for a in record.values()]
    for cid in (2, 3):
        foreign = strategy.client_state[cid]["pi"].cpu().numpy()
        assert not any(arr.shape == foreign.shape and (arr == foreign).all() for arr in sent), cid


@pytest.mark.parametrize("node_config, sent", [({}, True), ({"min-group": 1000}, False)])
def test_a_nodes_min_group_floor_keeps_small_clusters_home(fedgmi_after_init, node_config: dict, sent: bool,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The server asks for k-FED centroids with min_group 1; a node whose config says
    ``min-group=1000`` (more than any client's cluster) uploads none, the same node without the
    floor uploads them."""
    from flwr.app import Context, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedgmi.flower.client_app import step

    for attribute in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attribute, 1)  # messages are built inside a Flower run
    grid = RecordingGrid([NODE_A, NODE_B])
    rounds = FlowerRounds(grid, RunSettings(resolve_config("configs/pm_digits.yaml"), round_timeout=1.0),
                          strategy=fedgmi_after_init)
    rounds.holder, rounds.queried = assign_clients({}, [(NODE_A, [0, 1]), (NODE_B, [2, 3])]), {NODE_A, NODE_B}
    shared = {"local_clusters": torch.tensor(10), "seed": torch.tensor(0), "min_group": torch.tensor(1)}
    with pytest.raises(RuntimeError, match="no reply within round-timeout"):
        rounds.call("topic.kmeans", {c: {} for c in range(4)}, shared)
    to_a = next(m for m in grid.sent if m.metadata.dst_node_id == NODE_A)
    context = Context(run_id=1, node_id=NODE_A, node_config={"client-ids": "0-1", **node_config}, state=RecordDict(),
                      run_config={"config": "configs/pm_digits.yaml", "overrides": "--scenario.num_clients 4"})
    reply = step(to_a, context)
    for cid in (0, 1):
        centroids = wire.step_reply(reply.content, cid)["centroids"]
        assert (len(centroids) > 0) is sent, (cid, centroids.shape)


def test_a_bad_min_group_floor_is_one_line() -> None:
    from fedgmi.flower.runtime import floored

    with pytest.raises(ConfigError, match=r"^node config: min-group = 0 must be an integer >= 1$"):
        floored({"min_group": torch.tensor(5)}, {"min-group": 0})
    assert int(floored({"min_group": torch.tensor(5)}, {"min-group": 3})["min_group"]) == 5  # the larger one
    assert floored({"seed": torch.tensor(1)}, {"min-group": 30}) == {"seed": torch.tensor(1)}
