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
from typing import TYPE_CHECKING

import numpy as np
import torch
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from fedgmi.federated.clients import (
    ClientPool,
    InProcessClients,
    NodeClient,
    Payload,
    payload_bytes,
)

if TYPE_CHECKING:
    from fedgmi.data.scenario import ClientData

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


def client_local_kmeans(request: Payload, data: ClientData) -> Payload:
    """Step ``"topic.kmeans"`` (client): k-means on the client's training inputs with
    ``local_clusters`` clusters, seeded ``seed + client id``; uploads ``centroids`` (m, D) and
    ``counts`` (m,), float32, of the clusters with at least ``min_group`` samples only (a
    smaller cluster's centroid is close to its few images: it stays on the client)."""
    centroids, counts = _local_kmeans(data.x_train.cpu().numpy(), int(request["local_clusters"]),
                                      int(request["seed"]) + int(data.client_id))
    keep = counts >= int(request.get("min_group", 1))
    return {"centroids": torch.as_tensor(centroids[keep], dtype=torch.float32),
            "counts": torch.as_tensor(counts[keep], dtype=torch.float32)}


def client_lloyd(request: Payload, data: ClientData) -> Payload:
    """Step ``"topic.lloyd"`` (client): per received centroid (``centroids`` (M, D)) the ``sums``
    (M, D) and ``counts`` (M,) of the client's training inputs nearest to it, float32; zeros for
    a centroid nearest to fewer than ``min_group`` of them (a sum of one image is that image)."""
    centroids = request["centroids"]
    x = data.x_train
    assign = nearest_centroid(x, centroids).cpu()
    sums = torch.zeros(centroids.shape, dtype=torch.float32).index_add_(0, assign, x.float().cpu())
    counts = torch.bincount(assign, minlength=len(centroids)).float()
    withheld = counts < int(request.get("min_group", 1))
    sums[withheld], counts[withheld] = 0.0, 0.0
    return {"sums": sums, "counts": counts}


def client_histogram(request: Payload, data: ClientData) -> Payload:
    """Step ``"topic.histogram"`` (client): the (V,) int32 ``histogram`` of the client's tokens
    (its nearest fine cluster, or (cluster, label) when ``num_classes`` > 0)."""
    classes = int(request["num_classes"]) or None
    vocab = len(request["centroids"]) * (classes or 1)
    token = tokens(data.x_train, request["centroids"], data.y_train if classes else None, classes)
    return {"histogram": torch.bincount(token.cpu(), minlength=vocab).int()}


#: The topic model's client steps (:meth:`fedgmi.algorithms.gmi.FedGMI.client_step`).
CLIENT_STEPS = {"topic.kmeans": client_local_kmeans, "topic.lloyd": client_lloyd, "topic.histogram": client_histogram}


class _Steps:
    """Runs :data:`CLIENT_STEPS` for a pool of plain tensors (no strategy)."""

    name = "topic model"

    def client_step(self, step: str, request: Payload, data: ClientData) -> Payload:
        return CLIENT_STEPS[step](request, data)


def _pool(clients: ClientPool | Sequence[torch.Tensor], labels: Sequence[torch.Tensor] | None = None) -> ClientPool:
    """``clients`` as a pool: a pool as it is, or per client (n_c, D) inputs (and (n_c,) labels)
    held in process."""
    if isinstance(clients, ClientPool):
        return clients
    from fedgmi.data.scenario import ClientData

    labels = labels if labels is not None else [torch.zeros(len(x), dtype=torch.long) for x in clients]
    empty = torch.zeros(0)
    data = [ClientData(c, x, y, empty, empty.long()) for c, (x, y) in enumerate(zip(clients, labels))]
    return InProcessClients(_Steps(), [NodeClient(d) for d in data])  # type: ignore[arg-type]


def federated_kmeans(
    clients: ClientPool | Sequence[torch.Tensor],
    num_clusters: int,
    local_clusters: int = 10,
    lloyd_rounds: int = 5,
    seed: int = 0,
    min_group: int = 1,
) -> tuple[torch.Tensor, int, int]:
    """k-FED one-shot seeding, then federated Lloyd rounds, as client steps.

    Args:
        clients: The clients (a pool), or per client (n_c, D) samples held in process (they stay
            on the client; only centroids, sums and counts travel).
        num_clusters: M, the number of global fine clusters.
        local_clusters: clusters each client fits locally before the one-shot merge.
        lloyd_rounds: federated Lloyd iterations after the merge.
        min_group: No upload describes fewer than this many of a client's samples: a local
            cluster or a Lloyd cell with fewer stays on the client (paper, k-FED: silent; here:
            a minimum group size, as in k-anonymity; 1 uploads every group).

    Returns:
        ``(centroids, bytes_up, bytes_down)`` with centroids (M, D) float32, and the payload bytes
        of the steps (the final centroids' download included).

    Raises:
        ValueError: no client has a local cluster of ``min_group`` samples or more.
    """
    pool = _pool(clients)
    ids = pool.client_ids
    up0, down0 = pool.bytes_up, pool.bytes_down
    group = {"min_group": torch.tensor(min_group)}
    local = pool.call("topic.kmeans", {c: {} for c in ids},
                      {"local_clusters": torch.tensor(local_clusters), "seed": torch.tensor(seed), **group})
    points = torch.cat([local[c]["centroids"] for c in ids]).double().numpy()
    counts = torch.cat([local[c]["counts"] for c in ids]).double().numpy()
    if not len(points):
        raise ValueError(f"no client has a local cluster of min_group = {min_group} samples or more: "
                         "lower it (FedGMI: algorithm.init_args.topic_min_group)")
    num_clusters = min(num_clusters, len(points))
    server = _kmeans(points, num_clusters, seed, n_init=3, weights=counts)
    centroids = torch.as_tensor(server.cluster_centers_, dtype=torch.float32)
    for _ in range(lloyd_rounds):
        replies = pool.call("topic.lloyd", {c: {} for c in ids}, {"centroids": centroids, **group})
        sums = torch.stack([replies[c]["sums"] for c in ids]).sum(0)
        totals = torch.stack([replies[c]["counts"] for c in ids]).sum(0)
        keep = totals > 0
        centroids = centroids.clone()
        centroids[keep] = sums[keep] / totals[keep, None]
    final_down = len(ids) * centroids.numel() * centroids.element_size()  # sent with the histogram step
    return centroids, pool.bytes_up - up0, pool.bytes_down - down0 + final_down


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
    clients: ClientPool | Sequence[torch.Tensor],
    num_components: int,
    num_clusters: int = 60,
    local_clusters: int = 10,
    lloyd_rounds: int = 5,
    restarts: int = 20,
    iters: int = 200,
    seed: int = 0,
    clients_y: Sequence[torch.Tensor] | None = None,
    num_classes: int | None = None,
    min_group: int = 1,
) -> TopicInit:
    """Run both stages (fine clusters, then the federated topic model) on all clients, every
    computation on a client's data a client step (:data:`CLIENT_STEPS`).

    With labels (``num_classes``) a token is the pair (fine cluster, label): inputs that look
    alike but carry different labels in different inherent distributions (an upright 9 and a 6
    turned 180 degrees) then count as different tokens, and co-occurrence can tell them apart.

    Args:
        clients: The clients (a pool), or per client (n_c, D) training samples held in process.
        num_components: K.
        num_clusters: M fine clusters (default 60; 30-120 measured in the README).
        clients_y: With ``clients`` as tensors: per client, (n_c,) labels.
        num_classes: Y: tokens include the labels (``None``: label-free tokens).
        min_group: Smallest group of a client's samples an upload of the fine-cluster stage
            may describe (see :func:`federated_kmeans`).

    Returns:
        A :class:`TopicInit` with the global centroids and log beta and each client's pi (rows in
        client-id order).
    """
    pool = _pool(clients, clients_y)
    ids = pool.client_ids
    classes = num_classes if (clients_y is not None or isinstance(clients, ClientPool)) else None
    centroids, up, down = federated_kmeans(pool, num_clusters, local_clusters, lloyd_rounds, seed, min_group)
    vocab = len(centroids) * (classes or 1)
    replies = pool.call("topic.histogram", {c: {} for c in ids},
                        {"centroids": centroids, "num_classes": torch.tensor(classes or 0)})
    hists = torch.stack([replies[c]["histogram"] for c in ids]).double().numpy()
    pi, beta, log_lik = fit_plsa(hists, num_components, restarts, iters, seed)
    return TopicInit(
        centroids=centroids,
        log_beta=torch.as_tensor(np.log(beta), dtype=torch.float32),
        proportions=torch.as_tensor(pi, dtype=torch.float32),
        num_classes=classes,
        log_likelihood=log_lik,
        bytes_up=up + sum(payload_bytes(r) for r in replies.values()),  # + each client's (V,) int32 histogram
        bytes_down=down + len(ids) * (num_components * vocab + num_components) * 4,  # beta and its own pi
        exchanges=1 + lloyd_rounds + 1 + 1,
    )
