"""FedEM's E-step is softmax(log pi - loss); its proportions are the mean responsibilities;
every component goes up with weight n_c."""

import torch
import torch.nn.functional as F

from fedgmi.algorithms.fedem import FedEM
from tests.helpers import run_client


def test_fedem_estep_equals_softmax_of_log_pi_minus_loss(make_peer, small_scenario):
    strategy = make_peer(FedEM, local_epochs=1)
    client = small_scenario.clients[1]
    pi = torch.tensor([0.6, 0.3, 0.1])
    task = strategy.configure_round(0, [1])[0]
    losses = torch.stack([
        F.cross_entropy(strategy.worker.load(theta[:strategy.head_size])(client.x_train), client.y_train, reduction="none").detach()
        for theta in task.global_state], dim=1)  # (n, K)
    expected = torch.softmax(pi.log() - losses, dim=1)
    q, new_pi = strategy.estep(task, client.x_train, client.y_train, pi)
    torch.testing.assert_close(q, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(new_pi, expected.mean(0), rtol=1e-4, atol=1e-5)


def test_fedem_uploads_every_component_with_weight_n(make_peer, small_scenario):
    strategy = make_peer(FedEM, local_epochs=1)
    task = strategy.configure_round(0, [2])[0]
    reply = run_client(strategy, task, small_scenario.clients[2])
    n, p = reply.num_examples, task.global_state[0].numel()
    assert reply.aggregation_weights.tolist() == [float(n)] * 3
    assert task.bytes_down == 3 * 4 * p and reply.bytes_up == 3 * 4 * p + 3 * 4
