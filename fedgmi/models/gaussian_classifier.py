"""Gaussian classifiers in a feature space: pFedGM's statistic-extractor head (Kalman-gain
fusion of global and local class statistics, Bayes-rule prediction) and its navigator module.

pFedGM (Personalized Federated Learning via Gaussian Generative Modeling, arXiv 2603.11620)
publishes no equations; the formulas here are the reading documented in
:class:`fedgmi.algorithms.pfedgm.PFedGM` ("paper: ..., here: ..."). Everything is diagonal:
a covariance is a (d,) or (Y, d) tensor of per-dimension variances.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

LOG_2PI = math.log(2 * math.pi)


def kalman_fusion(prior_mean: torch.Tensor, prior_var: torch.Tensor, local_mean: torch.Tensor,
                  local_var: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Kalman-gain fusion of a prior class mean with a client's sample mean (diagonal).

    paper (abstract): "Kalman gain" fusion of the global representation distribution (prior)
    with the client's data (likelihood); here: the conjugate-Gaussian update of an unknown mean
    m ~ N(prior_mean, prior_var) from ``count`` samples of variance ``local_var``, per dimension:
    K = prior_var / (prior_var + local_var / count), mean = prior_mean + K (local_mean -
    prior_mean), var = (1 - K) prior_var. ``count`` = 0 gives K = 0 (the prior).

    Args:
        prior_mean: (Y, d) prior class means mu_g.
        prior_var: (Y, d) or (d,) prior variances (> 0).
        local_mean: (Y, d) client class means mu_c.
        local_var: (Y, d) or (d,) client within-class variances (> 0 where count > 0).
        count: (Y,) client samples per class n_c (>= 0).

    Returns:
        (Y, d) fused means mu_hat and (Y, d) posterior variances of the mean (1 - K) prior_var.
    """
    n = count.to(prior_mean.dtype)[:, None]  # (Y, 1)
    prior_var = torch.broadcast_to(prior_var, prior_mean.shape)
    local_var = torch.broadcast_to(local_var, prior_mean.shape)
    gain = torch.where(n > 0, prior_var * n / (prior_var * n + local_var), torch.zeros_like(prior_var))  # (Y, d)
    return prior_mean + gain * (local_mean - prior_mean), (1 - gain) * prior_var


def between_client_variance(counts: torch.Tensor, means: torch.Tensor,
                            variances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Variance of the clients' class means around the pooled mean, net of sampling noise: the
    method-of-moments estimate of a one-way random-effects model (ANOVA; e.g. Searle, Casella
    and McCulloch, Variance Components, 1992, sec. 3.5), per class and dimension.

    paper: a Kalman gain with the global distribution as prior, its variance not stated; here:
    the prior variance of a client's class mean is this tau^2 (empirical Bayes), so that the
    gain measures how much clients' class means really differ. With P_c clients holding class
    c, N_c = sum_p n_pc samples: MSB = sum_p n_pc (mu_pc - mu_c)^2 / (P_c - 1), MSW = sum_p n_pc
    s2_pc / (N_c - P_c), n0 = (N_c - sum_p n_pc^2 / N_c) / (P_c - 1), tau^2 = max(0, (MSB -
    MSW) / n0).

    Args:
        counts: (P, Y) samples per client and class; means, variances: (P, Y, d) the clients'
            class means and population variances.

    Returns:
        (Y, d) tau^2 (0 where not estimable) and (Y,) bool, where it is estimable (P_c >= 2
        and N_c > P_c).
    """
    n = counts.double()  # (P, Y)
    holders, total = (n > 0).sum(0).double(), n.sum(0)  # (Y,), (Y,)
    ok = (holders >= 2) & (total > holders)
    safe_total, dof_b, dof_w = total.clamp_min(1), (holders - 1).clamp_min(1), (total - holders).clamp_min(1)
    pooled = (n[..., None] * means.double()).sum(0) / safe_total[:, None]  # (Y, d)
    msb = (n[..., None] * (means.double() - pooled) ** 2).sum(0) / dof_b[:, None]
    msw = (n[..., None] * variances.double()).sum(0) / dof_w[:, None]
    n0 = (total - (n ** 2).sum(0) / safe_total) / dof_b  # (Y,)
    tau2 = ((msb - msw) / n0.clamp_min(1e-12)[:, None]).clamp_min(0) * ok[:, None]
    return tau2.to(means.dtype), ok


def gaussian_joint_log_density(z: torch.Tensor, means: torch.Tensor, variances: torch.Tensor,
                               log_prior: torch.Tensor) -> torch.Tensor:
    """log pi_c + log N(z; mu_c, diag(var_c)) for every class c (nats).

    Args:
        z: (N, d) features; means: (Y, d); variances: (Y, d) or (d,) (> 0); log_prior: (Y,).

    Returns:
        (N, Y) joint log densities.
    """
    var = torch.broadcast_to(variances, means.shape)  # (Y, d)
    sq = ((z[:, None, :] - means[None]) ** 2 / var[None]).sum(-1)  # (N, Y)
    return log_prior[None] - 0.5 * (sq + var.log().sum(-1)[None] + means.shape[1] * LOG_2PI)


def gaussian_class_log_probs(z: torch.Tensor, means: torch.Tensor, variances: torch.Tensor,
                             log_prior: torch.Tensor) -> torch.Tensor:
    """Bayes rule with Gaussian class-conditionals: log p(y = c | z), p proportional to
    pi_c N(z; mu_c, diag(var_c)) (pFedGM's "Bayesian inference" prediction).

    Args:
        z: (N, d) features; means: (Y, d); variances: (Y, d) or (d,) (> 0); log_prior: (Y,)
            log class prior (-inf allowed for impossible classes, not for all).

    Returns:
        (N, Y) normalised class log-probabilities.
    """
    return torch.log_softmax(gaussian_joint_log_density(z, means, variances, log_prior), dim=-1)


def smoothed_log_prior(counts: torch.Tensor, reference: torch.Tensor, strength: float) -> torch.Tensor:
    """Log of the Dirichlet posterior-mean class prior pi_c = (n_c + a r_c) / (n + a).

    paper: class priors pi_c, smoothing not stated; here: a Dirichlet prior of concentration a
    (``strength``, in pseudo-samples) centred at the reference frequencies r (the global class
    frequencies), so that a class the client never saw keeps probability a r_c / (n + a) > 0.

    Args:
        counts: (Y,) the client's class counts n_c; reference: (Y,) positive frequencies (sum 1).
        strength: a >= 0 (0: the client's own frequencies, an unseen class impossible).

    Returns:
        (Y,) log pi.
    """
    pi = counts.double() + strength * reference.double()
    return (pi / pi.sum()).log().to(reference.dtype)


class NavigatorNet(nn.Module):
    """pFedGM's shared model: a feature extractor z = phi(x) and the navigator's class anchors
    m (Y, d), one parameter vector so that both are averaged FedAvg-style.

    Args:
        extractor: Maps (B, D) inputs to (B, d) features; has ``feature_dim`` = d.
        num_classes: Y.
        anchor_scale: Standard deviation of the anchors' N(0, s^2) initialisation.
    """

    def __init__(self, extractor: nn.Module, num_classes: int, anchor_scale: float = 1.0) -> None:
        super().__init__()
        self.extractor = extractor
        self.anchors = nn.Parameter(anchor_scale * torch.randn(num_classes, extractor.feature_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) inputs -> (B, d) features."""
        return self.extractor(x)


ExtractorFactory = Callable[[Sequence[int]], nn.Module]
