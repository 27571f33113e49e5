"""Convolutional VAE component with a likelihood for 8-bit (natural) images.

:class:`ConvVAE` is a :class:`~fedgmi.models.vae.ComponentVAE` whose encoder and decoder are
convolutional (two stride-2 4x4 convolutions down, two transposed ones up, as in DCGAN-style
VAEs) and whose decoder likelihood ``p(x | z)`` is chosen by ``likelihood``:

* ``"discretized_logistic"`` (default; the one for CIFAR-10): every sub-pixel is an 8-bit value
  with probability mass given by a logistic distribution (mean and log-scale predicted by the
  decoder, i.e. a learned, per-sub-pixel variance) integrated over its bin, PixelCNN++'s
  likelihood with a single mixture component (Salimans, Karpathy, Chen & Kingma 2017, Eq. 2;
  Kingma et al. 2016, IAF). Why this and not a Gaussian with learned variance: a Gaussian is a
  density on continuous values, and on 8-bit data its variance can shrink onto the 256 levels
  so that ``log p(x)`` grows without bound unless the data are dequantised; a discretised
  likelihood is a probability of the actual 8-bit image, so ``-log2 p(x) / D`` is a true
  bits/dim, directly comparable to published CIFAR-10 numbers (PixelCNN++ 2.92, a plain VAE
  roughly 4.5 to 5.5 bits/dim). It is also well defined for values off the 8-bit grid
  (corrupted images): the mass of the bin around the value.
* ``"bernoulli"``: pixel intensities in [0, 1] as Bernoulli means, as
  :class:`~fedgmi.models.vae.ComponentVAE` (for MNIST-like grey images).

Every log-density is in nats; ``bits/dim = -log p(x) / (D ln 2)`` with ``D = C H W`` (the
evaluation's ``test_nll_bits_per_dim``).

Shape letters: ``B`` batch, ``C``/``H``/``W`` image channels/height/width, ``D = C H W``,
``L`` latent dimensions, ``P`` decoder outputs per sub-pixel (1 Bernoulli, 2 logistic), ``S``
samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fedgmi.errors import ConfigError
from fedgmi.models.elbo import bernoulli_log_likelihood
from fedgmi.models.vae import ComponentVAE

__all__ = ["LIKELIHOODS", "ConvVAE", "discretized_logistic_log_likelihood"]

LIKELIHOODS: tuple[str, ...] = ("discretized_logistic", "bernoulli")
"""Names accepted by :class:`ConvVAE`'s ``likelihood``."""

MIN_LOG_SCALE = -7.0
"""Lower clamp of the logistic log-scale (PixelCNN++'s value)."""

_CHUNK_ELEMENTS = 1 << 22


def discretized_logistic_log_likelihood(mean: torch.Tensor, log_scale: torch.Tensor, x: torch.Tensor,
                                        bins: int = 256) -> torch.Tensor:
    """``log P(x)`` of 8-bit data under per-sub-pixel discretised logistics, summed over ``D``.

    With ``x`` in [0, 1] rescaled to ``v = 2x - 1`` in [-1, 1] and bin half-width
    ``h = 1 / (bins - 1)``: ``P(v) = sigmoid((v + h - m) / s) - sigmoid((v - h - m) / s)``; the
    lowest bin extends to -inf and the highest to +inf (Salimans et al. 2017, Eq. 2 and their
    ``discretized_mix_logistic_loss``, one component). Where the difference underflows
    (< 1e-5) the density at the bin centre times the bin width is used, as there.

    Args:
        mean: ``(..., D)`` logistic means ``m`` in the [-1, 1] scale.
        log_scale: ``(..., D)`` ``log s``; clamped below at :data:`MIN_LOG_SCALE`.
        x: ``(B, D)`` data in [0, 1], broadcastable against ``mean``.
        bins: Number of levels (256 for 8-bit images).

    Returns:
        ``(...)`` log-probability in nats, summed over the last dimension.
    """
    v = 2.0 * x - 1.0
    half = 1.0 / (bins - 1)
    log_scale = log_scale.clamp_min(MIN_LOG_SCALE)
    inv_s = torch.exp(-log_scale)
    centred = v - mean
    plus_in = inv_s * (centred + half)
    min_in = inv_s * (centred - half)
    log_cdf_plus = plus_in - F.softplus(plus_in)  # log sigmoid(plus_in): lowest bin
    log_one_minus_cdf_min = -F.softplus(min_in)  # log (1 - sigmoid(min_in)): highest bin
    cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
    mid_in = inv_s * centred
    log_pdf_mid = mid_in - log_scale - 2.0 * F.softplus(mid_in)  # log logistic density
    inner = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp_min(1e-12)),
                        log_pdf_mid - math.log((bins - 1) / 2.0))
    log_probs = torch.where(v < -0.999, log_cdf_plus, torch.where(v > 0.999, log_one_minus_cdf_min, inner))
    return log_probs.sum(dim=-1)


class ConvVAE(ComponentVAE):
    """Convolutional VAE component; see the module docstring for the likelihoods.

    Encoder: ``(B, D)`` -> ``(B, C, H, W)`` -> Conv4x4/2(C, c1) ReLU -> Conv4x4/2(c1, c2) ReLU
    -> flatten -> Linear(-> 2L). Decoder: Linear(L -> c2 H/4 W/4) ReLU -> ConvT4x4/2(c2, c1) ReLU
    -> ConvT4x4/2(c1, P C) -> ``(B, P D)``, the first ``D`` outputs the Bernoulli logits or
    logistic means, the next ``D`` the logistic log-scales.

    Args:
        image_shape: ``(C, H, W)`` with ``H`` and ``W`` divisible by 4 (first positional
            parameter: components are built as ``factory(image_shape)``).
        channels: ``(c1, c2)`` convolution widths.
        latent_dim: ``L >= 1``.
        likelihood: One of :data:`LIKELIHOODS`.
        lr, estimator, num_samples: As :class:`~fedgmi.models.vae.ComponentVAE`.

    Raises:
        ConfigError: A bad shape, width or likelihood (and ComponentVAE's own checks).
    """

    def __init__(
        self,
        image_shape: tuple[int, ...] = (3, 32, 32),
        channels: Sequence[int] = (32, 64),
        latent_dim: int = 32,
        likelihood: str = "discretized_logistic",
        lr: float = 1e-3,
        estimator: str = "elbo",
        num_samples: int = 1,
    ) -> None:
        if likelihood not in LIKELIHOODS:
            raise ConfigError(f"likelihood = {likelihood!r} is unknown; allowed: {', '.join(LIKELIHOODS)}")
        if (isinstance(channels, str | bytes) or not isinstance(channels, Sequence) or len(channels) != 2
                or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in channels)):
            raise ConfigError(f"channels = {channels!r} must be two positive ints (c1, c2)")
        shape = tuple(image_shape) if isinstance(image_shape, Sequence) else ()
        if len(shape) != 3 or not all(isinstance(d, int) and d >= 1 for d in shape) or shape[1] % 4 or shape[2] % 4:
            raise ConfigError(f"image_shape = {image_shape!r}: ConvVAE needs (C, H, W) with H and W divisible by 4")
        self.channels = tuple(int(c) for c in channels)
        self.likelihood = likelihood
        self.params_per_pixel = 2 if likelihood == "discretized_logistic" else 1  # P
        super().__init__(image_shape, (), latent_dim, lr, estimator, num_samples)
        self.save_hyperparameters()

    # ------------------------------------------------------------------ networks
    def build_encoder(self) -> nn.Module:
        """``(B, D)`` -> ``(B, 2L)`` (``mu`` then ``logvar``)."""
        c, h, w = self.image_shape
        c1, c2 = self.channels
        return nn.Sequential(
            nn.Unflatten(1, (c, h, w)),
            nn.Conv2d(c, c1, 4, 2, 1), nn.ReLU(),  # (B, c1, H/2, W/2)
            nn.Conv2d(c1, c2, 4, 2, 1), nn.ReLU(),  # (B, c2, H/4, W/4)
            nn.Flatten(),
            nn.Linear(c2 * (h // 4) * (w // 4), 2 * self.latent_dim),
        )

    def build_decoder(self) -> nn.Module:
        """``(N, L)`` -> ``(N, P D)`` decoder outputs."""
        c, h, w = self.image_shape
        c1, c2 = self.channels
        p = self.params_per_pixel
        return nn.Sequential(
            nn.Linear(self.latent_dim, c2 * (h // 4) * (w // 4)), nn.ReLU(),
            nn.Unflatten(1, (c2, h // 4, w // 4)),
            nn.ConvTranspose2d(c2, c1, 4, 2, 1), nn.ReLU(),  # (N, c1, H/2, W/2)
            nn.ConvTranspose2d(c1, p * c, 4, 2, 1),  # (N, P C, H, W), viewed as (N, P, C, H, W)
            nn.Flatten(),  # (N, P D): P blocks of D
        )

    # ------------------------------------------------------------------ likelihood
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder outputs ``(..., P D)`` for latents ``(..., L)``: Bernoulli logits (``P = 1``)
        or logistic means then log-scales (``P = 2``), in the network's compute dtype."""
        lead = z.shape[:-1]
        out = self.decoder(z.reshape(-1, self.latent_dim).to(self._param_dtype()))  # (N, P D)
        return out.reshape(*lead, self.params_per_pixel * self.data_dim)

    def _log_px_given_z(self, z: torch.Tensor, x: torch.Tensor, chunk_size: int | None) -> torch.Tensor:
        """``log p(x | z_s)``, ``(S, B)`` nats, for ``z`` ``(S, B, L)`` and ``x`` ``(B, D)``."""
        num_samples, batch = z.shape[0], z.shape[1]
        if chunk_size is None:
            chunk_size = max(1, _CHUNK_ELEMENTS // max(1, batch * self.data_dim * self.params_per_pixel))
        out = []
        for start in range(0, num_samples, chunk_size):
            params = self.decode(z[start : start + chunk_size]).to(x.dtype)  # (c, B, P D)
            if self.likelihood == "bernoulli":
                out.append(bernoulli_log_likelihood(params, x))  # (c, B)
            else:
                mean, log_scale = params.split(self.data_dim, dim=-1)  # (c, B, D) each
                out.append(discretized_logistic_log_likelihood(mean, log_scale, x))  # (c, B)
        return torch.cat(out, dim=0)  # (S, B)

    def _pixels(self, params: torch.Tensor) -> torch.Tensor:
        """Decoder outputs ``(N, P D)`` -> expected pixel values ``(N, D)`` in [0, 1]."""
        params = params.to(torch.promote_types(params.dtype, torch.float32))
        if self.likelihood == "bernoulli":
            return torch.sigmoid(params)
        mean = params[..., : self.data_dim]
        return ((mean + 1.0) / 2.0).clamp(0.0, 1.0)  # the logistic's mean, back to [0, 1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images from the model: the decoder's mean pixel values at ``z ~ N(0, I)``.

        Returns:
            ``(n, *image_shape)`` in [0, 1].
        """
        if not isinstance(n, int) or n < 0:
            raise ConfigError(f"n={n!r} is invalid; allowed: an int >= 0")
        z = self._standard_normal((int(n), self.latent_dim), None, generator)
        return self._pixels(self.decode(z)).reshape(int(n), *self.image_shape)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction: mean pixel values at ``z = mu(x)``, ``(B, *image_shape)``."""
        mu, _ = self.encode(x)
        return self._pixels(self.decode(mu)).reshape(mu.shape[0], *self.image_shape)
