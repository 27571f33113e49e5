"""IFCA picks the cluster model with the lower loss, trains and uploads only that one."""

import torch

from fedgmi.algorithms.fedavg import FedAvg
from fedgmi.algorithms.ifca import IFCA, hard_cluster
from tests.helpers import run_client


def test_hard_cluster_by_hand():
    evidence = torch.tensor([[-1.0, -2.0], [-3.0, -0.5], [-1.0, -1.0]])  # sums -5.0, -3.5
    torch.testing.assert_close(hard_cluster(evidence), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(hard_cluster(torch.zeros(4, 2)), torch.tensor([0.5, 0.5]))  # no labels


def test_ifca_picks_the_lower_loss_cluster_and_sends_one_model_up(make_peer, small_scenario):
    client = small_scenario.clients[0]
    trained = make_peer(FedAvg, local_epochs=10)  # a model that fits client 0 well
    reply = run_client(trained, trained.configure_round(0, [0])[0], client)
    good = trained.global_state[0] + reply.updates[0]
    strategy = make_peer(IFCA, num_components=2, local_epochs=1)
    strategy.global_state = [strategy.global_state[0], good]  # cluster 1: the lower loss on client 0
    task = strategy.configure_round(0, [0])[0]
    out = run_client(strategy, task, client)
    torch.testing.assert_close(strategy.client_proportions(0), torch.tensor([0.0, 1.0]))
    assert out.updates[0] is None and out.updates[1] is not None
    p = good.numel()
    assert task.bytes_down == 2 * 4 * p and out.bytes_up == 4 * p + 2 * 4
    strategy.aggregate(0, [out])
    torch.testing.assert_close(strategy.global_state[1], good + out.updates[1])
    assert torch.equal(strategy.global_state[0], task.global_state[0])
