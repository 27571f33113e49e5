"""Pure log-likelihood, KL and bound functions for VAE density estimation.

All quantities are natural-log densities (units: nats). Shape letters: ``B`` batch, ``D``
pixels (data dimensions), ``L`` latent dimensions, ``S`` Monte-Carlo / importance samples.

References:
    Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014 (Eq. 10, Appendices B, C.1).
    Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016 (Eq. 8).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "bernoulli_log_likelihood",
    "diagonal_gaussian_log_density",
    "gaussian_kl_to_standard_normal",
    "iwae_bound",
    "standard_normal_log_density",
]

_LOG_2PI = math.log(2.0 * math.pi)


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of ``x`` under independent Bernoullis with the given logits.

    ``sum_d [x_d log sigmoid(l_d) + (1 - x_d) log(1 - sigmoid(l_d))]`` (Kingma & Welling 2014,
    Appendix C.1), computed stably as ``-binary_cross_entropy_with_logits``. Continuous
    ``x`` in [0, 1] (e.g. grey levels) is allowed; the value is then a cross-entropy, not a
    normalised log-probability.

    Args:
        logits: Decoder logits, shape ``(..., D)``; e.g. ``(B, D)`` or ``(S, B, D)``.
        x: Targets in [0, 1], shape broadcastable to ``logits`` (e.g. ``(B, D)``).

    Returns:
        Log-likelihood in nats summed over the last (pixel) dimension, shape ``(...)``
        (e.g. ``(B,)`` or ``(S, B)``).
    """
    logits, x = torch.broadcast_tensors(logits, x.to(logits.dtype))
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=-1)


def gaussian_kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Analytic ``KL(N(mu, diag exp(logvar)) || N(0, I))``.

    ``-1/2 sum_j (1 + logvar_j - mu_j^2 - exp(logvar_j))`` (Kingma & Welling 2014, Appendix B).

    Args:
        mu: Posterior means, shape ``(..., L)`` (e.g. ``(B, L)``).
        logvar: Posterior log-variances, same shape as ``mu``.

    Returns:
        KL divergence in nats summed over the last (latent) dimension, shape ``(...)``.
    """
    return -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(dim=-1)


def diagonal_gaussian_log_density(
    z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> torch.Tensor:
    """Log-density of ``z`` under ``N(mu, diag exp(logvar))``.

    ``-1/2 sum_j (log 2 pi + logvar_j + (z_j - mu_j)^2 / exp(logvar_j))``.

    Args:
        z: Points, shape ``(..., L)`` (e.g. ``(S, B, L)``).
        mu: Means, shape broadcastable to ``z`` (e.g. ``(B, L)``).
        logvar: Log-variances, shape broadcastable to ``z``.

    Returns:
        Log-density in nats summed over the last dimension, shape ``(...)``.
    """
    return -0.5 * (_LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(dim=-1)


def standard_normal_log_density(z: torch.Tensor) -> torch.Tensor:
    """Log-density of ``z`` under the prior ``N(0, I)``: ``-1/2 sum_j (log 2 pi + z_j^2)``.

    Args:
        z: Points, shape ``(..., L)``.

    Returns:
        Log-density in nats summed over the last dimension, shape ``(...)``.
    """
    return -0.5 * (_LOG_2PI + z.pow(2)).sum(dim=-1)


def iwae_bound(log_weights: torch.Tensor) -> torch.Tensor:
    """Importance-weighted lower bound on ``log p(x)`` (Burda et al. 2016, Eq. 8).

    ``L_S = log (1/S sum_s w_s) = logsumexp_s(log w_s) - log S`` with
    ``log w_s = log p(x | z_s) + log p(z_s) - log q(z_s | x)`` and ``z_s ~ q(z | x)``.

    Args:
        log_weights: Log importance weights, shape ``(S, B)`` (sample dimension first; any
            trailing shape is allowed).

    Returns:
        The bound in nats, shape ``(B,)`` (the input shape without the first dimension).

    Raises:
        ValueError: If ``log_weights`` is a scalar or has ``S = 0`` samples.
    """
    if log_weights.dim() < 1 or log_weights.shape[0] < 1:
        raise ValueError(
            "iwae_bound needs log_weights of shape (S, ...) with S >= 1, "
            f"got {tuple(log_weights.shape)}"
        )
    num_samples = log_weights.shape[0]
    return torch.logsumexp(log_weights, dim=0) - math.log(num_samples)
