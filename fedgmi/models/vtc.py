"""The variational transposed-convolution generator (VTC) of FedVTC.

FedVTC (Bridging Generalization Gap of Heterogeneous Federated Clients Using Generative Models,
arXiv 2508.01669, ICLR 2026) decodes feature vectors back into images: a feature z = g(x) in
R^d is perturbed into the latent v = z + sigma (.) eps, eps ~ N(0, I) (the reparameterisation
trick, Kingma and Welling 2014), and a transposed-convolution decoder psi maps v to an image
x' = psi(v). Sampling v from the (global) class Gaussians then yields labelled synthetic images.

Paper: a reconstruction term and a KL term; here: the reconstruction is the Bernoulli
log-likelihood of the project's VAEs (:func:`~fedgmi.models.elbo.bernoulli_log_likelihood`,
grey levels in [0, 1]), sigma is a learned per-dimension vector of the generator (paper: silent
on its form), the KL is the analytic one between diagonal Gaussians. Units: nats. Shape letters:
``B`` batch, ``d`` feature (latent) dimensions, ``D`` = C H W pixels, ``Y`` classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from fedgmi.errors import ConfigError
from fedgmi.models.elbo import bernoulli_log_likelihood, gaussian_kl_to_standard_normal


class VTCGenerator(nn.Module):
    """psi: latent v (B, d) -> Bernoulli logits of (C, H, W) images, flattened to (B, D).

    Linear(d -> c1 * ceil(H/4) * ceil(W/4)) + ReLU, then ConvTranspose2d(c1 -> c2, 4, stride 2,
    padding 1) + ReLU and ConvTranspose2d(c2 -> C, 4, stride 2, padding 1), each doubling the
    spatial size, cropped to (H, W) (a DCGAN-style decoder, Radford et al. 2016; paper:
    "transposed convolutions", sizes silent; here: these).

    Args:
        image_shape: (C, H, W) of the images to generate.
        feature_dim: d, the latent (feature) size.
        channels: (c1, c2) channels of the two transposed-convolution inputs.
        init_sigma: Initial value of every entry of sigma (the latent noise std), > 0.

    Attributes:
        log_sigma: (d,) learned log of the per-dimension latent noise std sigma.

    Raises:
        ConfigError: not a (C, H, W) shape, or a non-positive size.
    """

    def __init__(self, image_shape: Sequence[int], feature_dim: int = 64, channels: Sequence[int] = (16, 8),
                 init_sigma: float = 0.1) -> None:
        super().__init__()
        if len(image_shape) != 3 or len(channels) != 2 or min(*image_shape, *channels, feature_dim) < 1:
            raise ConfigError(f"image_shape = {tuple(image_shape)!r}, channels = {list(channels)!r}, feature_dim = "
                              f"{feature_dim!r}: VTCGenerator needs (C, H, W), two channel widths and d >= 1")
        if not init_sigma > 0:
            raise ConfigError(f"init_sigma = {init_sigma!r} must be > 0")
        self.image_shape = tuple(int(s) for s in image_shape)
        c0, h, w = self.image_shape
        c1, c2 = (int(c) for c in channels)
        self.start = (c1, math.ceil(h / 4), math.ceil(w / 4))
        self.log_sigma = nn.Parameter(torch.full((int(feature_dim),), math.log(init_sigma)))
        self.project = nn.Sequential(nn.Linear(int(feature_dim), math.prod(self.start)), nn.ReLU())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(c1, c2, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(c2, c0, 4, stride=2, padding=1),
        )

    def latent(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, d) v = z + sigma (.) eps, eps ~ N(0, I) (paper: Sec. "VTC", reparameterised)."""
        eps = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        return z + self.log_sigma.exp() * eps

    def logits(self, v: torch.Tensor) -> torch.Tensor:
        """(B, d) latents -> (B, D) Bernoulli pixel logits."""
        _, h, w = self.image_shape
        out = self.deconv(self.project(v).reshape(len(v), *self.start))
        return out[:, :, :h, :w].reshape(len(v), -1)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """(B, d) latents -> (B, D) images x' = sigmoid(logits) in [0, 1] (Bernoulli means)."""
        return torch.sigmoid(self.logits(v))


def gaussian_kl(mean_q: torch.Tensor, logvar_q: torch.Tensor, mean_p: torch.Tensor,
                logvar_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mean_q, diag e^logvar_q) || N(mean_p, diag e^logvar_p)) in nats, (...,) from (..., d).

    The KL is invariant under the affine map u = (v - mean_p) / sigma_p, which turns p into
    N(0, I): so it is :func:`~fedgmi.models.elbo.gaussian_kl_to_standard_normal` of
    ((mean_q - mean_p) / sigma_p, logvar_q - logvar_p). Arguments broadcast against each other.
    """
    shifted = (mean_q - mean_p) * torch.exp(-0.5 * logvar_p)
    return gaussian_kl_to_standard_normal(shifted, (logvar_q - logvar_p).expand_as(shifted))


def vtc_terms(psi: VTCGenerator, z: torch.Tensor, x: torch.Tensor, prior_mean: torch.Tensor,
              prior_logvar: torch.Tensor,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The VTC's two variational terms on a batch, each (B,) in nats.

    reconstruction = -log p(x | v), v = z + sigma (.) eps, under Bernoulli pixels with logits
    psi(v); kl = KL(N(z, diag sigma^2) || N(prior_mean, diag e^prior_logvar)) (paper: the KL that
    aligns the local feature distribution with the global class Gaussian of the sample's class).

    Args:
        psi: The generator.
        z: (B, d) features g(x) (the means of q(v | x)).
        x: (B, D) images in [0, 1].
        prior_mean, prior_logvar: (B, d) the class Gaussian of each sample's label.
        generator: Draws eps.
    """
    v = psi.latent(z, generator)
    reconstruction = -bernoulli_log_likelihood(psi.logits(v), x.reshape(len(x), -1))
    kl = gaussian_kl(z, 2.0 * psi.log_sigma, prior_mean, prior_logvar)
    return reconstruction, kl


def sample_class_latents(means: torch.Tensor, variances: torch.Tensor, labels: torch.Tensor,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, d) v ~ N(means[y], diag variances[y]) for (B,) labels y, from (Y, d) class Gaussians
    (paper: "sample v from the global distribution")."""
    mean = means[labels]
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + variances[labels].sqrt() * eps
