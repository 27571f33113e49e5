"""Local: nothing crosses the boundary; each client keeps and is evaluated with its own model."""

import torch

from fedgmi.algorithms.local import Local
from tests.helpers import run_client


def test_local_sends_nothing_and_keeps_one_model_per_client(make_peer, small_scenario):
    strategy = make_peer(Local, local_epochs=2)
    init = strategy.global_state[0].clone()
    tasks = strategy.configure_round(0, [0, 1])
    replies = [run_client(strategy, t, small_scenario.clients[t.client_id]) for t in tasks]
    strategy.aggregate(0, replies)
    assert [t.bytes_down for t in tasks] == [0, 0] and [r.bytes_up for r in replies] == [0, 0]
    a, b = strategy.client_model(0), strategy.client_model(1)
    assert not torch.equal(a, b) and not torch.equal(a, init)
    torch.testing.assert_close(strategy.client_model(4), init)  # never trained: the initial model
    x = small_scenario.clients[0].x_test
    _, own = strategy.client_component_outputs(0, "test", x)
    _, other = strategy.client_component_outputs(1, "test", x)
    assert own.shape == (len(x), 1, small_scenario.num_classes) and not torch.allclose(own, other)
