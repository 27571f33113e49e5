"""FedGMM: the server's weighted average of client moment uploads is the exact federated EM
M-step (the pooled responsibility-weighted mean and covariance)."""

import torch

from fedgmi.algorithms.fedgmm import FedGMM
from fedgmi.models.gaussian import moments_to_gaussian
from tests.helpers import run_client, run_initialize


def test_aggregated_moments_equal_the_pooled_weighted_moments(make_peer, small_scenario):
    strategy = make_peer(FedGMM, feature_dim=4, local_epochs=1)
    run_initialize(strategy, small_scenario.clients)
    tasks = strategy.configure_round(0, [0, 1])
    replies = [run_client(strategy, t, small_scenario.clients[t.client_id]) for t in tasks]
    strategy.aggregate(0, replies)
    d, hs = 4, strategy.head_size
    for k in range(3):
        f_all, r_all = [], []
        for t in tasks:  # recompute each client's responsibilities as it did
            x, y = small_scenario.clients[t.client_id].x_train, small_scenario.clients[t.client_id].y_train
            q, _ = strategy.estep(t, x, y, None)  # round 0 started from uniform
            f_all.append(strategy.features(x))
            r_all.append(q[:, k])
        f, r = torch.cat(f_all), torch.cat(r_all)
        mean = (r[:, None] * f).sum(0) / r.sum()
        second = f.T @ (r[:, None] * f) / r.sum()
        theta = strategy.global_state[k]
        torch.testing.assert_close(theta[hs:hs + d], mean, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(theta[hs + d:].view(d, d), second, rtol=1e-4, atol=1e-3)
    means, covs = strategy.gaussians(strategy.global_state)
    torch.testing.assert_close(covs[0], moments_to_gaussian(means[0], strategy.global_state[0][hs + d:].view(d, d),
                                                            strategy.covariance_reg))
    p = strategy.global_state[0].numel()
    assert tasks[0].bytes_down == 3 * 4 * p and replies[0].bytes_up == 3 * 4 * p + 3 * 4
