"""FedGMM (Wu, Zhou, Yang, Mahdavi, ICML 2023): a Gaussian mixture density of the inputs combined
with component classifiers, learned by federated EM.

Here component k is a Gaussian N(f(x); mu_k, Sigma_k) in a shared feature space f (a fixed
seeded random projection of the pixels to ``feature_dim`` dimensions,
:mod:`fedgmi.models.gaussian`) together with a classifier p_k(y | x); the paper's M Gaussians
and K learners are tied, M = K (documented simplification). Client E-step (the paper's eq. for
the joint posterior):

    q_ik = softmax_k(log pi_ck + log N(f(x_i); mu_k, Sigma_k) + log p_k(y_i | x_i)),
    pi_ck = mean_i q_ik,

then each classifier trains on q-weighted cross-entropy. The Gaussian parameters are held in
moment form (mu_k, E_k[f f^T]) after the classifier parameters; the client uploads its local
q-weighted moments (as deltas) with weights w_ck = sum_i q_ik, so the server's weighted average
is exactly the federated EM M-step mu_k = sum_c sum_i q_ik f_i / sum_c w_ck (and likewise the
second moment); Sigma_k = E_k[f f^T] - mu_k mu_k^T + reg I. Classifiers are averaged with the
same weights. Initialisation: one federated pass of (n_c, sum f, sum f f^T) gives the global
mean m and covariance S; mu_k = m + chol(S) z_k with seeded z_k ~ N(0, I), Sigma_k = S.
Down: K (classifier + d + d^2) vectors; up: the same per component and K weights.
"""

from __future__ import annotations

import math

import torch

from fedgmi.algorithms.fedem import FedEM
from fedgmi.federated.clients import client_pool
from fedgmi.federated.strategy import Initialization
from fedgmi.models.gaussian import gaussian_log_density, moments_to_gaussian, random_projection


class GaussianFeatures:
    """The shared feature space: f(x) = x W with W from :func:`random_projection`."""

    def setup_features(self, feature_dim: int, projection_seed: int) -> None:
        self.projection = random_projection(math.prod(self.spec.image_shape), feature_dim,
                                            projection_seed).to(self.fabric.device)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) inputs -> (N, d) features."""
        return x.reshape(len(x), -1).to(self.projection.device).float() @ self.projection


class FedGMM(GaussianFeatures, FedEM):
    """FedGMM with K (Gaussian, classifier) components.

    Args:
        feature_dim: d, dimension of the random projection (default 16).
        projection_seed: Seed of the projection matrix, shared by every client (default 0).
        covariance_reg: Ridge added to every covariance's diagonal (default 1e-3).
        **kwargs: as :class:`~fedgmi.algorithms.classifier_mixture.ClassifierMixture`.
    """

    def __init__(self, feature_dim: int = 16, projection_seed: int = 0, covariance_reg: float = 1e-3,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        random_projection(1, feature_dim, 0)  # validates feature_dim
        self.feature_dim, self.projection_seed, self.covariance_reg = feature_dim, projection_seed, covariance_reg

    def setup(self, spec, fabric, seed: int) -> None:
        super().setup(spec, fabric, seed)
        self.setup_features(self.feature_dim, self.projection_seed)

    def density_size(self) -> int:
        return self.feature_dim + self.feature_dim ** 2

    def gaussians(self, state) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, d) means and (K, d, d) covariances of the components of ``state``."""
        d = self.feature_dim
        moments = [theta[self.head_size:] for theta in state]
        means = torch.stack([m[:d] for m in moments])
        covs = torch.stack([moments_to_gaussian(m[:d], m[d:].view(d, d), self.covariance_reg) for m in moments])
        return means, covs

    def log_density(self, x: torch.Tensor, state) -> torch.Tensor:
        """(N, K) log N(f(x); mu_k, Sigma_k) in nats (a feature-space density, not of pixels)."""
        return gaussian_log_density(self.features(x), *self.gaussians(state))

    def density_update(self, theta: torch.Tensor, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """The client's r-weighted moments (E_r[f], E_r[f f^T]) minus the received ones."""
        f = self.features(x)  # (n, d)
        w = (r / r.sum()).unsqueeze(1)  # (n, 1)
        local = torch.cat([(w * f).sum(0), (f.T @ (w * f)).flatten()])
        return local - theta[self.head_size:]

    def aggregation_weights(self, r: torch.Tensor, num_examples: int) -> torch.Tensor:
        """(K,) responsibility mass w_ck = sum_i q_ik (makes the average the exact EM M-step)."""
        return r.sum(0)

    def initialize(self, clients) -> Initialization:
        """Federated (n, sum f, sum f f^T) pass; random means around the global mean."""
        d, device = self.feature_dim, self.fabric.device
        pool = client_pool(clients, self)
        replies = pool.call("gmm.moments", {c: {} for c in pool.client_ids})
        stats = [replies[c]["moments"].to(device) for c in pool.client_ids]
        total = torch.stack(stats).sum(0)
        mean, second = total[1:1 + d] / total[0], total[1 + d:].view(d, d) / total[0]
        cov = moments_to_gaussian(mean, second, self.covariance_reg)
        gen = torch.Generator().manual_seed(self.seed)
        chol = torch.linalg.cholesky(cov.double()).float()
        for k, theta in enumerate(self.global_state):
            mu = mean + chol @ torch.randn(d, generator=gen).to(device)
            theta[self.head_size:] = torch.cat([mu, (cov + torch.outer(mu, mu)).flatten()])
        return Initialization(bytes_up=pool.bytes_up, exchanges=1)

    def client_step(self, step, request, data):
        """``"gmm.moments"``: the client's (1 + d + d * d,) float32 ``moments`` (n, sum f, sum f f^T)."""
        if step != "gmm.moments":
            return super().client_step(step, request, data)
        f = self.features(data.x_train)
        n = torch.ones(1, device=f.device) * len(data.x_train)
        return {"moments": torch.cat([n, f.sum(0), (f.T @ f).flatten()]).cpu()}
