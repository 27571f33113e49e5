"""FedGenGMM (Pettersson et al., arXiv 2506.01780): one-shot federated Gaussian mixture.

Before round 0, each client fits a local Gaussian mixture (scikit-learn ``GaussianMixture``,
full covariances) to its inputs in the shared feature space (the fixed seeded random projection
of :mod:`fedgmi.models.gaussian`, as FedGMM) and uploads its weights, means and covariances
once. The server draws ``synthetic_samples`` points from the union of the local mixtures (each
client's share proportional to its n_c), fits the global K-component mixture on them, and sends
it to every client once. The global mixture is then fixed: it gives log p_k(x) for density,
proportion estimation (EM on pi with the densities fixed) and assignment, label-free.

Classifiers (our choice, for client accuracy): K classifier heads are trained in the rounds
that follow, each client weighting its samples by the global mixture's responsibilities
r_ik = softmax_k(log pi_ck + log N_k(f(x_i))), averaged per component with weights sum_i r_ik
(the ClassifierMixture round). Their bytes are counted like every other method's.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

from fedgmi.algorithms.classifier_mixture import ClassifierMixture
from fedgmi.algorithms.fedgmm import GaussianFeatures
from fedgmi.errors import ConfigError
from fedgmi.federated.clients import client_pool
from fedgmi.federated.messages import ClientTask
from fedgmi.federated.responsibilities import estimate_proportions
from fedgmi.federated.strategy import ClientState, Initialization
from fedgmi.models.gaussian import gaussian_log_density, random_projection

FLOAT32_BYTES = 4


def mixture_bytes(gmm: GaussianMixture) -> int:
    """float32 bytes of a full-covariance mixture's weights, means and covariances."""
    return FLOAT32_BYTES * (gmm.weights_.size + gmm.means_.size + gmm.covariances_.size)


def fit_local_gmm(features: np.ndarray, local_components: int, reg: float, seed: int) -> GaussianMixture:
    """A client's local full-covariance mixture of its (n_c, d) features (at most n_c - 1
    components), seeded ``seed``."""
    return GaussianMixture(min(local_components, len(features) - 1), covariance_type="full", reg_covar=reg,
                           random_state=seed).fit(features)


def global_gmm_fit(local: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]], num_components: int,
                   synthetic_samples: int, reg: float, seed: int) -> GaussianMixture:
    """The server's part: draw ``synthetic_samples`` points from the union of the clients' local
    mixtures (each client's share proportional to its n_c) and fit the global mixture.

    Args:
        local: Per client, in client order, (n_c, weights (m,), means (m, d), covariances (m, d, d)).
    """
    rng = np.random.default_rng(seed)
    sizes = np.array([n for n, *_ in local], dtype=np.float64)
    shares = np.floor(synthetic_samples * sizes / sizes.sum()).astype(int)
    synthetic = []
    for (_, weights, means, covariances), share in zip(local, shares):
        counts = rng.multinomial(share, weights)
        synthetic += [rng.multivariate_normal(m, s, size=n) for m, s, n in zip(means, covariances, counts) if n > 0]
    return GaussianMixture(num_components, covariance_type="full", reg_covar=reg, n_init=3,
                           random_state=seed).fit(np.concatenate(synthetic))


def fit_federated_gmm(client_features: list[np.ndarray], num_components: int, local_components: int,
                      synthetic_samples: int, reg: float, seed: int) -> tuple[GaussianMixture, int]:
    """The one-shot FedGenGMM fit with every client in this process (client c's local fit seeded
    ``seed + c``; :func:`fit_local_gmm` then :func:`global_gmm_fit`).

    Args:
        client_features: per client, (n_c, d) features.
        num_components: K of the global mixture.
        local_components: components of each local mixture (at most n_c - 1).
        synthetic_samples: points drawn on the server from the union of the local mixtures.
        reg: scikit-learn ``reg_covar``.
        seed: seed of the local fits, the sampling and the global fit.

    Returns:
        ``(global_gmm, bytes_up)``: the fitted global mixture and the clients' upload in bytes
        (float32 parameters).
    """
    fits = [fit_local_gmm(f, local_components, reg, seed + c) for c, f in enumerate(client_features)]
    local = [(len(f), g.weights_, g.means_, g.covariances_) for f, g in zip(client_features, fits)]
    return (global_gmm_fit(local, num_components, synthetic_samples, reg, seed),
            sum(mixture_bytes(g) for g in fits))


class FedGenGMM(GaussianFeatures, ClassifierMixture):
    """FedGenGMM's one-shot global mixture, plus responsibility-weighted classifiers.

    Args:
        feature_dim: d of the random projection (default 16, as FedGMM).
        projection_seed: Seed of the projection, shared by every client (default 0).
        local_components: Components of each client's local mixture (default K).
        synthetic_samples: Points the server samples from the union (default 10,000).
        covariance_reg: scikit-learn ``reg_covar`` of every fit (default 1e-3).
        proportion_iters: EM iterations on a client's pi with the densities fixed.
        **kwargs: as :class:`~fedgmi.algorithms.classifier_mixture.ClassifierMixture`.

    Raises:
        ConfigError: a non-positive count.
    """

    label_evidence = False

    def __init__(self, feature_dim: int = 16, projection_seed: int = 0, local_components: int | None = None,
                 synthetic_samples: int = 10000, covariance_reg: float = 1e-3, proportion_iters: int = 10,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        random_projection(1, feature_dim, 0)  # validates feature_dim
        for name, value in [("local_components", local_components or 1), ("synthetic_samples", synthetic_samples),
                            ("proportion_iters", proportion_iters)]:
            if int(value) != value or value < 1:
                raise ConfigError(f"{name} = {value!r} must be an integer >= 1")
        self.feature_dim, self.projection_seed, self.covariance_reg = feature_dim, projection_seed, covariance_reg
        self.local_components, self.synthetic_samples = local_components, synthetic_samples
        self.proportion_iters = proportion_iters
        self.means = self.covariances = None

    def setup(self, spec, fabric, seed: int) -> None:
        super().setup(spec, fabric, seed)
        self.setup_features(self.feature_dim, self.projection_seed)

    def initialize(self, clients) -> Initialization:
        """The one-shot fit: each client fits its local mixture (client step ``"gengmm.local"``,
        float64 parameters), the server the global one, which goes to every client once."""
        pool = client_pool(clients, self)
        ids, k = pool.client_ids, self.spec.num_components
        replies = pool.call("gengmm.local", {c: {} for c in ids},
                            {"local_components": torch.tensor(self.local_components or k), "seed": torch.tensor(self.seed)})
        local = [(int(r["num_examples"]), *(r[key].numpy() for key in ("weights", "means", "covariances")))
                 for r in (replies[c] for c in ids)]
        gmm = global_gmm_fit(local, k, self.synthetic_samples, self.covariance_reg, self.seed)
        self.set_mixture(torch.from_numpy(gmm.means_), torch.from_numpy(gmm.covariances_))
        return Initialization(bytes_up=pool.bytes_up, bytes_down=len(ids) * mixture_bytes(gmm), exchanges=2)

    def client_step(self, step, request, data):
        """``"gengmm.local"``: the client's local mixture of its features (seeded ``seed + client
        id``): ``weights`` (m,), ``means`` (m, d), ``covariances`` (m, d, d) float64 and
        ``num_examples``."""
        if step != "gengmm.local":
            return super().client_step(step, request, data)
        features = self.features(data.x_train).double().cpu().numpy()
        gmm = fit_local_gmm(features, int(request["local_components"]), self.covariance_reg,
                            int(request["seed"]) + int(data.client_id))
        return {"weights": torch.from_numpy(gmm.weights_), "means": torch.from_numpy(gmm.means_),
                "covariances": torch.from_numpy(gmm.covariances_), "num_examples": torch.tensor(len(features))}

    def set_mixture(self, means: torch.Tensor, covariances: torch.Tensor) -> None:
        """Install the global (K, d) means and (K, d, d) covariances."""
        self.means = means.float().to(self.fabric.device)
        self.covariances = covariances.float().to(self.fabric.device)

    def log_density(self, x: torch.Tensor, state) -> torch.Tensor:
        """(N, K) log N_k(f(x)) of the global mixture (feature space, not pixels)."""
        if self.means is None:
            raise RuntimeError("FedGenGMM: initialize() (the one-shot fit) must run first")
        return gaussian_log_density(self.features(x), self.means, self.covariances)

    def sample_weights(self, task: ClientTask, x: torch.Tensor, y: torch.Tensor,
                       state: ClientState) -> tuple[torch.Tensor, ClientState]:
        """The global mixture's responsibilities (n, K); the state is the client's proportions."""
        pi, r = estimate_proportions(self.log_density(x, task.global_state), state.get("pi"), self.proportion_iters)
        return r, {"pi": pi}

    def state_dict(self):
        return {**super().state_dict(), "gmm": {"means": self.means.cpu(), "covariances": self.covariances.cpu()}}

    def node_state(self, client_ids):
        """The global mixture (feature space), which every client's E-step reads."""
        return {"gmm": {"means": self.means.cpu(), "covariances": self.covariances.cpu()}}

    def load_node_state(self, state) -> None:
        self.set_mixture(state["gmm"]["means"], state["gmm"]["covariances"])

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.set_mixture(state["gmm"]["means"], state["gmm"]["covariances"])
