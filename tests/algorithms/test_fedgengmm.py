"""FedGenGMM: the one-shot global mixture recovers well-separated Gaussians; bytes of the
one-shot exchange against the mixture's parameter counts."""

import numpy as np
import torch

from fedgmi.algorithms.fedgengmm import FedGenGMM, fit_federated_gmm
from tests.helpers import run_client, run_initialize

MEANS = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])


def test_global_gmm_recovers_well_separated_gaussians_from_skewed_clients():
    rng = np.random.default_rng(1)
    clients = []
    for pi in ([0.8, 0.2, 0.0], [0.0, 0.5, 0.5], [0.1, 0.1, 0.8], [0.34, 0.33, 0.33]):
        z = rng.choice(3, size=300, p=pi)
        clients.append(MEANS[z] + rng.normal(scale=0.5, size=(300, 2)))
    gmm, bytes_up = fit_federated_gmm(clients, 3, 3, 6000, 1e-6, seed=0)
    order = np.argsort(gmm.means_[:, 0] + 2 * gmm.means_[:, 1])  # (0,0), (10,0), (0,10)
    np.testing.assert_allclose(gmm.means_[order], MEANS, atol=0.15)
    np.testing.assert_allclose(gmm.covariances_[order], np.broadcast_to(0.25 * np.eye(2), (3, 2, 2)), atol=0.06)
    np.testing.assert_allclose(gmm.weights_[order], [0.31, 0.2325, 0.4575], atol=0.05)
    assert bytes_up == 4 * 4 * (3 + 3 * 2 + 3 * 4)  # 4 clients: weights, means, covariances


def test_fedgengmm_initialize_counts_the_one_shot_bytes_and_trains_classifiers(make_peer, small_scenario):
    strategy = make_peer(FedGenGMM, feature_dim=4, local_components=2, synthetic_samples=2000, local_epochs=1)
    stats = run_initialize(strategy, small_scenario.clients)
    c = len(small_scenario.clients)
    assert stats.bytes_up == c * (8 * (2 + 2 * 4 + 2 * 16) + 8)  # float64 local mixtures and n_c
    assert stats.bytes_down == c * 4 * (3 + 3 * 4 + 3 * 16)
    assert stats.exchanges == 2 and stats.client_states == {}
    task = strategy.configure_round(0, [0])[0]
    reply = run_client(strategy, task, small_scenario.clients[0])
    pi = strategy.client_proportions(0)
    assert pi.shape == (3,) and abs(float(pi.sum()) - 1) < 1e-5
    torch.testing.assert_close(reply.aggregation_weights.sum(), torch.tensor(float(reply.num_examples)))
    restored = make_peer(FedGenGMM, feature_dim=4)
    restored.load_state_dict(strategy.state_dict())
    x = small_scenario.clients[1].x_test
    torch.testing.assert_close(restored.log_density(x, restored.global_state),
                               strategy.log_density(x, strategy.global_state))
