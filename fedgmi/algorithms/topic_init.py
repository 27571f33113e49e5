"""Topic-model initialisation: how FedGMI's components come to specialise.

Identical components never separate, and a plain EM over K VAEs from a random start settles in
a mixed solution (measured in the README). What identifies the inherent distributions in the
PM scenario is *co-occurrence within clients*: samples of one inherent distribution rise and
fall together across clients, in proportion to pi_ck. This module exploits that before any VAE
is trained, in two cheap federated stages:

1. **Fine clusters** (k-FED; Dennis, Li & Smith, ICML 2021): each client runs k-means locally
   and uploads its centroids and their counts; the server clusters the union into M >> K fine
   centroids and refines them with a few federated Lloyd rounds (clients upload per-centroid
   sums and counts). Each client then holds a histogram h_c (M,) of its samples' nearest
   centroids.
2. **Topic model** (PLSA; Hofmann, SIGIR 1999): fine cluster m of client c has probability
   sum_k pi_ck beta_km. Each client uploads its histogram h_c once; the server fits PLSA by EM
   over the histograms (several random restarts, the one with the highest log-likelihood kept)
   and sends every client beta and its own pi_c. Paper: silent (FedGMI's initialisation is
   ours); here: one upload instead of a federated EM whose every iteration exchanges K x M
   expected counts per client. The two reveal the same: a client's expected counts sum over k
   to its histogram, sum_k n_ckm = h_cm, so the iterated protocol hands the server h_c at its
   first iteration anyway; the one-shot upload sends M counts once (bytes measured in the
   README) and the server's EM is the same computation, so the fitted model is identical.

FedGMI then uses r_ik proportional to pi_ck * beta_k,m(x_i) as the responsibilities of its
first (warm-up) rounds, so each VAE starts on data that is mostly one inherent distribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

_EPS = 1e-12


@dataclass(frozen=True)
class TopicInit:
    """Result of :func:`fit_topic_init`.

    Attributes:
        centroids: (M, D) float32 fine-cluster centroids (global, sent to clients).
        log_beta: (K, V) float32 log p(token v | component k) (global); a token is the fine
            cluster m (V = M), or the pair (m, label y) as v = m * Y + y (V = M * Y).
        proportions: (C, K) float32 each client's mixture proportions (client-side state).
        num_classes: Y when tokens include labels, else ``None``.
        log_likelihood: Total PLSA log-likelihood of the kept restart, in nats.
        bytes_up: Uplink bytes of both stages, all clients.
        bytes_down: Downlink bytes of both stages, all clients.
        exchanges: Server-client exchanges of both stages (each involves every client): the
            k-FED upload, the Lloyd rounds, the centroids' download with the histograms'
            upload, and the download of beta with each client's own pi.
    """

    centroids: torch.Tensor
    log_beta: torch.Tensor
    proportions: torch.Tensor
    num_classes: int | None
    log_likelihood: float
    bytes_up: int
    bytes_down: int
    exchanges: int = 0

    def log_likelihood_of(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Categorical log-likelihood log beta_k,v of each sample's token v.

        Args:
            x: (N, D) samples.
            y: (N,) labels; required when the tokens include labels.

        Returns:
            (N, K) log-likelihoods in nats.
        """
        return self.log_beta.to(x.device)[:, tokens(x, self.centroids, y, self.num_classes)].T


def tokens(x: torch.Tensor, centroids: torch.Tensor, y: torch.Tensor | None = None,
           num_classes: int | None = None) -> torch.Tensor:
    """(N,) token of each sample: its nearest fine cluster m, or m * Y + y with labels.

    Raises:
        ValueError: labels are needed (``num_classes`` set) but ``y`` is missing.
    """
    m = nearest_centroid(x, centroids)
    if num_classes is None:
        return m
    if y is None:
        raise ValueError("this topic model's tokens include labels: pass y")
    return m * num_classes + y.to(m.device)


def nearest_centroid(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(N,) index of the nearest of the (M, D) centroids for each of the (N, D) samples."""
    return torch.cdist(x.float(), centroids.to(x.device).float()).argmin(1)


def _kmeans(x: np.ndarray, clusters: int, seed: int, n_init: int, weights=None) -> KMeans:
    """scikit-learn's KMeans on one thread: its OpenMP pool and torch's spin against each other
    on a small machine (measured: topic initialisation 3.9 s with both pools, 0.6 s without)."""
    with threadpool_limits(limits=1):
        return KMeans(clusters, n_init=n_init, random_state=seed).fit(x, sample_weight=weights)


def _local_kmeans(x: np.ndarray, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Client side of k-FED: (m, D) local centroids and their (m,) counts."""
    clusters = max(1, min(clusters, len(x)))
    km = _kmeans(x, clusters, seed, n_init=1)
    return km.cluster_centers_, np.bincount(km.labels_, minlength=clusters).astype(np.float64)


def federated_kmeans(
    clients_x: Sequence[torch.Tensor],
    num_clusters: int,
    local_clusters: int = 10,
    lloyd_rounds: int = 5,
    seed: int = 0,
) -> tuple[torch.Tensor, int, int]:
    """k-FED one-shot seeding, then federated Lloyd rounds.

    Args:
        clients_x: per client, (n_c, D) samples (stay on the client; only sums travel).
        num_clusters: M, the number of global fine clusters.
        local_clusters: clusters each client fits locally before the one-shot merge.
        lloyd_rounds: federated Lloyd iterations after the merge.

    Returns:
        ``(centroids, bytes_up, bytes_down)`` with centroids (M, D) float32.
    """
    local = [_local_kmeans(x.cpu().numpy(), local_clusters, seed + c) for c, x in enumerate(clients_x)]
    points = np.concatenate([c for c, _ in local])
    counts = np.concatenate([n for _, n in local])
    num_clusters = min(num_clusters, len(points))
    server = _kmeans(points, num_clusters, seed, n_init=3, weights=counts)
    centroids = torch.as_tensor(server.cluster_centers_, dtype=torch.float32)
    dim = centroids.shape[1]
    bytes_up = int(sum(c.size + n.size for c, n in local)) * 4
    bytes_down = 0
    for _ in range(lloyd_rounds):
        sums = torch.zeros_like(centroids)
        totals = torch.zeros(num_clusters)
        for x in clients_x:  # client side: per-centroid sums and counts
            assign = nearest_centroid(x, centroids).cpu()
            sums.index_add_(0, assign, x.float().cpu())
            totals += torch.bincount(assign, minlength=num_clusters).float()
        keep = totals > 0
        centroids[keep] = sums[keep] / totals[keep, None]
        bytes_down += len(clients_x) * num_clusters * dim * 4
        bytes_up += len(clients_x) * num_clusters * (dim + 1) * 4
    return centroids, bytes_up, bytes_down + len(clients_x) * num_clusters * dim * 4


def plsa_client_step(
    hist: np.ndarray, pi: np.ndarray, beta: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One client's PLSA E-step for R restarts at once (Hofmann 1999, Eqs. 7-9).

    Args:
        hist: (M,) the client's fine-cluster counts.
        pi: (R, K) the client's proportions per restart.
        beta: (R, K, M) global p(m | k) per restart.

    Returns:
        ``(new_pi (R, K), expected_counts (R, K, M), log_likelihood (R,))``.
    """
    joint = pi[:, :, None] * beta  # (R, K, M)
    mix = joint.sum(1, keepdims=True)  # (R, 1, M)
    counts = hist[None, None, :] * joint / np.maximum(mix, _EPS)  # (R, K, M)
    new_pi = counts.sum(2) / max(hist.sum(), _EPS)
    log_lik = (hist[None, :] * np.log(np.maximum(mix[:, 0, :], _EPS))).sum(1)
    return new_pi, counts, log_lik


def fit_plsa(
    histograms: np.ndarray,
    num_components: int,
    restarts: int = 20,
    iters: int = 200,
    seed: int = 0,
    smoothing: float = 1e-3,
) -> tuple[np.ndarray, np.ndarray, float]:
    """PLSA by EM over the clients' histograms, R restarts side by side, keep the best.

    Args:
        histograms: (C, M) each client's fine-cluster counts (uploaded once, see the module
            docstring).
        num_components: K.
        smoothing: pseudo-count added to every beta_km (keeps log beta finite).

    Returns:
        ``(pi (C, K), beta (K, M), log_likelihood)`` of the restart with the highest total
        log-likelihood.
    """
    rng = np.random.default_rng(seed)
    num_clients, num_bins = histograms.shape
    pi = rng.dirichlet(np.ones(num_components), size=(num_clients, restarts))  # (C, R, K)
    beta = rng.dirichlet(np.ones(num_bins), size=(restarts, num_components))  # (R, K, M)
    for _ in range(iters):
        total = np.full_like(beta, smoothing)
        for c in range(num_clients):
            pi[c], counts, _ = plsa_client_step(histograms[c], pi[c], beta)
            total += counts
        beta = total / total.sum(2, keepdims=True)
    log_lik = sum(plsa_client_step(histograms[c], pi[c], beta)[2] for c in range(num_clients))
    best = int(np.argmax(log_lik))
    return pi[:, best], beta[best], float(log_lik[best])


def fit_topic_init(
    clients_x: Sequence[torch.Tensor],
    num_components: int,
    num_clusters: int = 60,
    local_clusters: int = 10,
    lloyd_rounds: int = 5,
    restarts: int = 20,
    iters: int = 200,
    seed: int = 0,
    clients_y: Sequence[torch.Tensor] | None = None,
    num_classes: int | None = None,
) -> TopicInit:
    """Run both stages (fine clusters, then the federated topic model) on all clients.

    With labels (``clients_y`` and ``num_classes``) a token is the pair (fine cluster, label):
    inputs that look alike but carry different labels in different inherent distributions
    (an upright 9 and a 6 turned 180 degrees) then count as different tokens, and
    co-occurrence can tell them apart.

    Args:
        clients_x: per client, (n_c, D) training samples.
        num_components: K.
        num_clusters: M fine clusters (default 60; 30-120 measured in the README).
        clients_y: per client, (n_c,) labels, or ``None`` (label-free tokens).
        num_classes: Y, with ``clients_y``.

    Returns:
        A :class:`TopicInit` with the global centroids and log beta and each client's pi.
    """
    centroids, up, down = federated_kmeans(clients_x, num_clusters, local_clusters, lloyd_rounds, seed)
    classes = num_classes if clients_y is not None else None
    vocab = len(centroids) * (classes or 1)
    labels = clients_y if clients_y is not None else [None] * len(clients_x)
    hists = np.stack([
        np.bincount(tokens(x, centroids, y, classes).cpu().numpy(), minlength=vocab)
        for x, y in zip(clients_x, labels)
    ]).astype(np.float64)
    pi, beta, log_lik = fit_plsa(hists, num_components, restarts, iters, seed)
    clients = len(clients_x)
    return TopicInit(
        centroids=centroids,
        log_beta=torch.as_tensor(np.log(beta), dtype=torch.float32),
        proportions=torch.as_tensor(pi, dtype=torch.float32),
        num_classes=classes,
        log_likelihood=log_lik,
        bytes_up=up + clients * vocab * 4,  # + each client's (V,) histogram, int32
        bytes_down=down + clients * (num_components * vocab + num_components) * 4,  # beta and its own pi
        exchanges=1 + lloyd_rounds + 1 + 1,
    )
