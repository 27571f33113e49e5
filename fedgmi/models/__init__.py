"""Density-estimator models for FedGMI mixture components."""

from fedgmi.models.bodies import CifarCNN
from fedgmi.models.conv_vae import ConvVAE
from fedgmi.models.elbo import (
    bernoulli_log_likelihood,
    diagonal_gaussian_log_density,
    gaussian_kl_to_standard_normal,
    iwae_bound,
    standard_normal_log_density,
)
from fedgmi.models.vae import ESTIMATORS, ComponentVAE, mlp

__all__ = [
    "ESTIMATORS",
    "CifarCNN",
    "ComponentVAE",
    "ConvVAE",
    "bernoulli_log_likelihood",
    "diagonal_gaussian_log_density",
    "gaussian_kl_to_standard_normal",
    "iwae_bound",
    "mlp",
    "standard_normal_log_density",
]
