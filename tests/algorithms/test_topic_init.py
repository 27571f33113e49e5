import numpy as np
import pytest
import torch

from fedgmi.algorithms.topic_init import (
    client_lloyd,
    client_local_kmeans,
    federated_kmeans,
    fit_plsa,
    fit_topic_init,
    nearest_centroid,
)


def test_plsa_recovers_planted_topics_from_client_histograms():
    rng = np.random.default_rng(0)
    k, m, c = 3, 12, 40
    beta = np.zeros((k, m))
    for t in range(k):  # topic t lives on its own 4 bins
        beta[t, 4 * t: 4 * t + 4] = rng.dirichlet(np.ones(4))
    pi = rng.dirichlet(np.full(k, 0.5), size=c)
    hists = np.stack([rng.multinomial(400, p @ beta) for p in pi]).astype(float)
    est_pi, est_beta, _ = fit_plsa(hists, k, restarts=5, iters=200, seed=1)
    order = [int(np.argmax(est_beta[:, 4 * t: 4 * t + 4].sum(1))) for t in range(k)]
    assert sorted(order) == [0, 1, 2]
    assert np.abs(est_pi[:, order] - pi).sum(1).mean() / 2 < 0.05


def test_federated_kmeans_finds_separated_clusters_across_clients():
    torch.manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    clients = []
    for c in range(6):  # each client sees only two of the four clusters
        ids = torch.tensor([c % 4, (c + 1) % 4]).repeat_interleave(30)
        clients.append(centres[ids] + 0.3 * torch.randn(60, 2))
    found, up, down = federated_kmeans(clients, 4, local_clusters=3, lloyd_rounds=3)
    dist = torch.cdist(centres, found).min(1).values
    assert (dist < 0.5).all(), dist
    assert up > 0 and down > 0
    assert nearest_centroid(centres, found).unique().numel() == 4


def test_topic_init_separates_two_shifted_distributions_by_co_occurrence():
    torch.manual_seed(0)
    # component 0: points near the origin, component 1: the same points shifted; clients mix them.
    base = torch.rand(2000, 2)
    rng = np.random.default_rng(0)
    clients, truth = [], []
    for _ in range(12):
        pi1 = rng.beta(0.5, 0.5)
        z = torch.tensor(rng.random(150) < pi1, dtype=torch.long)
        x = base[torch.randint(0, 2000, (150,))] + 3.0 * z[:, None]
        clients.append(x)
        truth.append(z)
    init = fit_topic_init(clients, 2, num_clusters=10, restarts=5, iters=100)
    pred = torch.cat([init.log_likelihood_of(x).argmax(1) for x in clients])
    z = torch.cat(truth)
    acc = max((pred == z).float().mean(), (pred != z).float().mean())
    assert acc > 0.98
    assert init.proportions.shape == (12, 2)
    torch.testing.assert_close(init.proportions.sum(1), torch.ones(12))


def test_label_tokens_separate_components_that_differ_only_in_their_labels():
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    clients_x, clients_y, truth = [], [], []
    for _ in range(16):  # same inputs in both components; component 1 swaps the labels
        z = torch.tensor(rng.random(200) < rng.beta(0.5, 0.5), dtype=torch.long)
        blob = torch.randint(0, 4, (200,))
        x = torch.stack([blob % 2, blob // 2], 1) * 5.0 + 0.3 * torch.randn(200, 2)
        y = (blob % 2) ^ z
        clients_x.append(x)
        clients_y.append(y)
        truth.append(z)
    z = torch.cat(truth)

    def accuracy(init, with_labels):
        pred = torch.cat([init.log_likelihood_of(x, y if with_labels else None).argmax(1)
                          for x, y in zip(clients_x, clients_y)])
        return max((pred == z).float().mean().item(), (pred != z).float().mean().item())

    labelled = fit_topic_init(clients_x, 2, num_clusters=4, restarts=5, iters=100,
                              clients_y=clients_y, num_classes=2)
    plain = fit_topic_init(clients_x, 2, num_clusters=4, restarts=5, iters=100)
    assert accuracy(labelled, True) > 0.97
    assert accuracy(plain, False) < 0.9  # the inputs alone cannot tell the components apart
    assert labelled.log_beta.shape == (2, 8)


def test_topic_init_bytes_are_the_one_shot_protocol_and_do_not_grow_with_em_iterations():
    torch.manual_seed(2)
    clients = [torch.rand(50, 6) for _ in range(5)]
    short = fit_topic_init(clients, 2, num_clusters=8, local_clusters=3, lloyd_rounds=2, restarts=2, iters=10)
    long = fit_topic_init(clients, 2, num_clusters=8, local_clusters=3, lloyd_rounds=2, restarts=9, iters=300)
    assert (short.bytes_up, short.bytes_down, short.exchanges) == (long.bytes_up, long.bytes_down, long.exchanges)
    c, d, m, k = 5, 6, 8, 2
    kfed = c * 3 * (d + 1) * 4  # local centroids and their counts
    lloyd_up, lloyd_down = 2 * c * m * (d + 1) * 4, 2 * c * m * d * 4
    assert short.bytes_up == kfed + lloyd_up + c * m * 4  # + each client's histogram
    settings = c * (3 + 2) * 8  # local_clusters, seed, min_group; each Lloyd step's min_group (int64)
    assert short.bytes_down == settings + lloyd_down + c * m * d * 4 + c * (k * m + k) * 4  # centroids; beta and its pi
    assert short.exchanges == 1 + 2 + 1 + 1
    # the server's EM on the uploaded histograms is the computation the iterated protocol did
    hists = np.stack([np.bincount(nearest_centroid(x, short.centroids).numpy(), minlength=m) for x in clients])
    pi, _, _ = fit_plsa(hists.astype(np.float64), k, restarts=2, iters=10, seed=0)
    np.testing.assert_array_equal(pi.astype(np.float32), short.proportions.numpy())


def _blob_client():
    """A client with 40 samples around (0, 0) and 3 around (50, 50), far from everything."""
    from fedgmi.data.scenario import ClientData

    torch.manual_seed(3)
    x = torch.cat([0.1 * torch.randn(40, 2), 50 + 0.1 * torch.randn(3, 2)])
    empty = torch.zeros(0)
    return ClientData(0, x, torch.zeros(43, dtype=torch.long), empty, empty.long())


@pytest.mark.parametrize("min_group, outlier_sent", [(1, True), (4, False)])
def test_a_local_cluster_smaller_than_min_group_stays_on_the_client(min_group, outlier_sent):
    request = {"local_clusters": torch.tensor(2), "seed": torch.tensor(0), "min_group": torch.tensor(min_group)}
    reply = client_local_kmeans(request, _blob_client())
    near_outlier = (reply["centroids"] - 50).norm(dim=1) < 1
    assert bool(near_outlier.any()) is outlier_sent
    assert reply["counts"].sum() == (43 if outlier_sent else 40)


@pytest.mark.parametrize("min_group", [1, 4])
def test_a_lloyd_cell_smaller_than_min_group_uploads_zeros(min_group):
    centroids = torch.tensor([[0.0, 0.0], [50.0, 50.0]])
    reply = client_lloyd({"centroids": centroids, "min_group": torch.tensor(min_group)}, _blob_client())
    assert reply["counts"].tolist() == ([40.0, 3.0] if min_group == 1 else [40.0, 0.0])
    assert bool(reply["sums"][1].abs().sum() > 0) is (min_group == 1)  # a sum of 3 points, or nothing


def test_no_cluster_large_enough_is_one_clear_error():
    clients = [torch.rand(12, 2) for _ in range(3)]
    with pytest.raises(ValueError, match="no client has a local cluster of min_group = 50 samples"):
        federated_kmeans(clients, 4, local_clusters=2, lloyd_rounds=1, min_group=50)


def test_min_group_keeps_separated_clusters_found():
    torch.manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    clients = [centres[torch.tensor([c % 4, (c + 1) % 4]).repeat_interleave(30)] + 0.3 * torch.randn(60, 2)
               for c in range(6)]
    found, _, _ = federated_kmeans(clients, 4, local_clusters=3, lloyd_rounds=3, min_group=10)
    assert (torch.cdist(centres, found).min(1).values < 0.5).all()
