"""Gaussian densities in a feature space the clients share (FedGMM and FedGenGMM).

The feature space is a fixed random projection f(x) = x W of the flattened pixels, with W a
(D, d) matrix of N(0, 1/d) entries drawn from ``projection_seed`` (Johnson-Lindenstrauss: it
keeps pairwise distances up to a small distortion). Every client builds the same W from the
seed, so nothing about it is sent.
"""

from __future__ import annotations

import math

import torch

from fedgmi.errors import ConfigError


def random_projection(data_dim: int, feature_dim: int, seed: int) -> torch.Tensor:
    """(D, d) float32 matrix of i.i.d. N(0, 1/d) entries, drawn from ``seed``.

    Raises:
        ConfigError: ``feature_dim`` < 1.
    """
    if int(feature_dim) != feature_dim or feature_dim < 1:
        raise ConfigError(f"feature_dim = {feature_dim!r} must be an integer >= 1")
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn(data_dim, feature_dim, generator=gen) / math.sqrt(feature_dim)


def gaussian_log_density(f: torch.Tensor, means: torch.Tensor, covariances: torch.Tensor) -> torch.Tensor:
    """log N(f_i; mu_k, Sigma_k) for every sample and component, in nats.

    Args:
        f: (N, d) features.
        means: (K, d) component means.
        covariances: (K, d, d) symmetric positive-definite covariances.

    Returns:
        (N, K) float32 log densities.
    """
    chol = torch.linalg.cholesky(covariances.double())  # (K, d, d)
    diff = (f.double().unsqueeze(1) - means.double().unsqueeze(0)).transpose(0, 1)  # (K, N, d)
    solved = torch.linalg.solve_triangular(chol, diff.transpose(1, 2), upper=False)  # (K, d, N)
    maha = solved.pow(2).sum(1)  # (K, N)
    log_det = 2 * torch.diagonal(chol, dim1=1, dim2=2).log().sum(1)  # (K,)
    d = f.shape[1]
    return (-0.5 * (maha + log_det.unsqueeze(1) + d * math.log(2 * math.pi))).T.float()


def moments_to_gaussian(mean: torch.Tensor, second_moment: torch.Tensor,
                        reg: float) -> torch.Tensor:
    """Covariance Sigma = E[f f^T] - mu mu^T + reg * I from the moment parameters.

    Moments averaged from lossy (quantised, partly sent) client updates can make
    E[f f^T] - mu mu^T indefinite; only then its eigenvalues are clamped at 0 before the ridge
    (the nearest positive semi-definite matrix in Frobenius norm, Higham 1988), so that the
    result is always positive definite and exact moments are left untouched.

    Args:
        mean: (d,) E[f]; second_moment: (d, d) E[f f^T]; reg: ridge (> 0) added to the diagonal.

    Returns:
        (d, d) symmetric positive-definite covariance.
    """
    cov = second_moment - torch.outer(mean, mean)
    cov = 0.5 * (cov + cov.T)
    eye = torch.eye(len(mean), device=mean.device, dtype=cov.dtype)
    if torch.linalg.cholesky_ex((cov + reg * eye).double()).info.item() != 0:
        values, vectors = torch.linalg.eigh(cov.double())
        cov = (vectors * values.clamp_min(0)) @ vectors.T
        cov = (0.5 * (cov + cov.T)).to(eye.dtype)
    return cov + reg * eye
