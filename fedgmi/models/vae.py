"""VAE density estimator used as one FedGMI mixture component.

FedGMI (Hou, Shi, Fan, Letaief, arXiv 2605.08760) models each inherent distribution ``k`` of
the probabilistic mixture with a generative model whose (bound on the) log-likelihood
``log p_k(x)`` enters the E-step responsibilities ``r_ik``; :class:`ComponentVAE` is that model
for image data: an MLP VAE with a Bernoulli decoder (Kingma & Welling 2014, Appendix C.1).

Shape letters used in comments: ``B`` batch, ``D`` pixels (``prod(image_shape)``), ``L``
latent dimensions, ``H`` hidden units, ``S`` Monte-Carlo / importance samples, ``N`` any
flattened leading size. All log-densities are in nats.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from typing import Any

import lightning
import torch
from torch import nn
from torchmetrics.aggregation import MeanMetric

from fedgmi.errors import ConfigError
from fedgmi.models.elbo import (
    bernoulli_log_likelihood,
    diagonal_gaussian_log_density,
    gaussian_kl_to_standard_normal,
    iwae_bound,
    standard_normal_log_density,
)

__all__ = ["ESTIMATORS", "ComponentVAE", "mlp"]

ESTIMATORS: tuple[str, ...] = ("elbo", "iwae")
"""Names accepted by :meth:`ComponentVAE.log_likelihood` and the ``estimator`` argument."""

# Keys of ComponentVAE.epoch_means: "<stage>_<value>", logged as "<stage>/<value>".
_EPOCH_MEANS = ("train_neg_elbo", "val_elbo", "val_elbo_bits_per_dim", "test_elbo",
                "test_elbo_bits_per_dim", "test_log_likelihood")

# Bound on S_chunk * B * D decoder-output elements per IWAE/ELBO chunk (~16 MiB in float32).
_CHUNK_ELEMENTS = 1 << 22


def mlp(dims: Sequence[int]) -> nn.Sequential:
    """Fully connected network ``dims[0] -> dims[1] -> ... -> dims[-1]``.

    ReLU between layers, none after the last (the output is an unconstrained linear layer).

    Args:
        dims: Layer widths, at least two entries (input and output width).

    Returns:
        An ``nn.Sequential`` mapping ``(N, dims[0])`` to ``(N, dims[-1])``.
    """
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
        if i > 0:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(d_in, d_out))
    return nn.Sequential(*layers)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _batch_field_kind(t: Any, batch_size: int) -> str:
    """``"labels"`` (integer ``(B,)``), ``"weights"`` (floating ``(B,)``) or ``"invalid"``."""
    if not isinstance(t, torch.Tensor) or t.shape != (batch_size,):
        return "invalid"
    if torch.is_floating_point(t):
        return "weights"
    if t.dtype != torch.bool and not t.is_complex():
        return "labels"
    return "invalid"


def _describe_batch(batch: Any) -> str:
    """``(float32 (4, 64), int64 (4,))``: the structure of a batch, for error messages."""
    def one(t: Any) -> str:
        if isinstance(t, torch.Tensor):
            return f"{str(t.dtype).removeprefix('torch.')} {tuple(t.shape)}"
        return type(t).__name__
    if isinstance(batch, (tuple, list)):
        return "(" + ", ".join(one(t) for t in batch) + ")"
    return one(batch)


def _loss_dtype(t: torch.Tensor) -> torch.dtype:
    """At least float32 (bf16/fp16 activations are upcast before any log-likelihood term)."""
    return torch.promote_types(t.dtype, torch.float32)


class ComponentVAE(lightning.LightningModule):
    """One FedGMI mixture component: a VAE density estimator of x (Bernoulli decoder).

    Encoder ``q(z | x) = N(mu(x), diag exp(logvar(x)))`` is an MLP
    ``D -> hidden_dims (ReLU) -> 2L``; decoder ``p(x | z) = prod_d Bernoulli(sigmoid(l_d(z)))``
    is an MLP ``L -> reversed(hidden_dims) (ReLU) -> D`` logits; prior ``p(z) = N(0, I)``.
    Subclasses may replace the networks by overriding :meth:`build_encoder` /
    :meth:`build_decoder` (e.g. a CNN) as long as they keep the flat ``(N, D)`` / ``(N, L)``
    interfaces.

    Inputs ``x`` hold pixel values in [0, 1] with shape ``(B, D)`` or ``(B, *image_shape)``
    (any trailing shape with ``D`` elements is flattened). Randomness comes from torch's
    global RNG, or from an explicit ``torch.Generator`` where a method accepts one.

    Standalone, it is a plain ``LightningModule``: ``Trainer.fit``, ``validate``, ``test`` and
    ``predict`` take loaders of ``x``, ``(x,)``, ``(x, y)``, ``(x, w)`` or ``(x, y, w)`` batches
    (integer second element = labels, ignored; floating = per-sample weights; see
    :meth:`training_step`), ``model(x)`` is the per-sample ``log p(x)`` bound (:meth:`forward`),
    ``predict`` returns that bound and the latent mean per batch (:meth:`predict_step`), the
    losses are logged per epoch as weighted means (``train/neg_elbo_epoch``, ``val/elbo``,
    ``test/elbo``, ...), and ``load_from_checkpoint`` rebuilds it from its saved
    hyperparameters. In a federation none of these hooks run: the client worker trains with
    :meth:`weighted_negative_elbo` and the algorithm's optimizer.

    Args:
        image_shape: Shape of one input, e.g. ``(1, 28, 28)``; ``D = prod(image_shape)``.
            Must stay the first positional parameter (components are built as
            ``factory(image_shape)``).
        hidden_dims: Hidden-layer widths of the encoder (the decoder uses them reversed);
            may be empty (linear encoder/decoder).
        latent_dim: Latent dimension ``L >= 1``.
        lr: Adam learning rate (> 0).
        estimator: Default estimator of ``log p(x)`` for :meth:`log_likelihood`:
            ``"elbo"`` or ``"iwae"``.
        num_samples: Default number of samples ``S >= 1`` for :meth:`log_likelihood`.
            Training always uses a single-sample ELBO.

    Raises:
        ConfigError: If any argument is out of range or the estimator is unknown.
    """

    def __init__(
        self,
        image_shape: tuple[int, ...] = (1, 28, 28),
        hidden_dims: tuple[int, ...] = (400,),
        latent_dim: int = 20,
        lr: float = 1e-3,
        estimator: str = "elbo",
        num_samples: int = 1,
    ) -> None:
        super().__init__()
        if (
            isinstance(image_shape, (str, bytes))
            or not isinstance(image_shape, Sequence)
            or len(image_shape) == 0
            or not all(_is_int(d) and d >= 1 for d in image_shape)
        ):
            raise ConfigError(
                f"image_shape={image_shape!r} is invalid; allowed: a non-empty tuple of "
                "positive ints, e.g. (1, 28, 28)"
            )
        if (
            isinstance(hidden_dims, (str, bytes))
            or not isinstance(hidden_dims, Sequence)
            or not all(_is_int(h) and h >= 1 for h in hidden_dims)
        ):
            raise ConfigError(
                f"hidden_dims={hidden_dims!r} is invalid; allowed: a (possibly empty) tuple "
                "of positive ints, e.g. (400,)"
            )
        if not _is_int(latent_dim) or latent_dim < 1:
            raise ConfigError(f"latent_dim={latent_dim!r} is invalid; allowed: an int >= 1")
        if (
            isinstance(lr, bool)
            or not isinstance(lr, numbers.Real)
            or not math.isfinite(lr)
            or lr <= 0
        ):
            raise ConfigError(f"lr={lr!r} is invalid; allowed: a finite float > 0")
        if estimator not in ESTIMATORS:
            raise ConfigError(
                f"estimator={estimator!r} is unknown; allowed: {', '.join(ESTIMATORS)}"
            )
        if not _is_int(num_samples) or num_samples < 1:
            raise ConfigError(f"num_samples={num_samples!r} is invalid; allowed: an int >= 1")
        self.save_hyperparameters()

        self.image_shape: tuple[int, ...] = tuple(int(d) for d in image_shape)
        self.data_dim: int = math.prod(self.image_shape)  # D
        self.hidden_dims: tuple[int, ...] = tuple(int(h) for h in hidden_dims)
        self.latent_dim: int = int(latent_dim)  # L
        self.lr: float = float(lr)
        self.estimator: str = estimator
        self.num_samples: int = int(num_samples)

        self.encoder = self.build_encoder()
        self.decoder = self.build_decoder()
        # Weighted epoch means of the logged values (no parameters, not in the state_dict).
        # nan_strategy "warn" (the default: NaNs are left out, with a warning), not "disable",
        # which replaces the weights by ones in torchmetrics <= 1.9 (torchmetrics issue #3434).
        self.epoch_means = nn.ModuleDict({name: MeanMetric() for name in _EPOCH_MEANS})

    # ------------------------------------------------------------------ networks
    def build_encoder(self) -> nn.Module:
        """Build the encoder network.

        Returns:
            A module mapping flat inputs ``(B, D)`` to ``(B, 2L)``: the first ``L`` outputs
            are ``mu``, the last ``L`` are ``logvar``.
        """
        return mlp((self.data_dim, *self.hidden_dims, 2 * self.latent_dim))

    def build_decoder(self) -> nn.Module:
        """Build the decoder network.

        Returns:
            A module mapping latents ``(N, L)`` to Bernoulli logits ``(N, D)``.
        """
        return mlp((self.latent_dim, *reversed(self.hidden_dims), self.data_dim))

    # ------------------------------------------------------------------ helpers
    def _flatten(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` or ``(B, *image_shape)`` -> ``(B, D)``."""
        if x.dim() < 2 or math.prod(x.shape[1:]) != self.data_dim:
            raise ConfigError(
                f"input x has shape {tuple(x.shape)}; allowed: (B, {self.data_dim}) or "
                f"(B, *{self.image_shape})"
            )
        return x.reshape(x.shape[0], self.data_dim)

    def _param_dtype(self) -> torch.dtype:
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    def _param_device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def _standard_normal(
        self,
        shape: tuple[int, ...],
        like: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """``N(0, I)`` noise of ``shape``, drawn on the generator's device then moved."""
        device = like.device if like is not None else self._param_device()
        if like is not None:
            dtype = like.dtype
        else:
            dtype = torch.promote_types(self._param_dtype(), torch.float32)
        if generator is None:
            return torch.randn(shape, device=device, dtype=dtype)
        eps = torch.randn(shape, generator=generator, device=generator.device, dtype=dtype)
        return eps.to(device)

    def _posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flat targets and posterior parameters, all in (at least) float32."""
        x = self._flatten(x)  # (B, D)
        mu, logvar = self.encode(x)  # (B, L) each
        dtype = _loss_dtype(mu)
        return x.to(dtype), mu.to(dtype), logvar.to(dtype)

    def _reparameterise(
        self,
        mu: torch.Tensor,
        logvar: torch.Tensor,
        num_samples: int,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """``z_s = mu + exp(logvar / 2) * eps_s``, ``eps ~ N(0, I)`` of shape ``(S, B, L)``."""
        if not _is_int(num_samples) or num_samples < 1:
            raise ConfigError(f"num_samples={num_samples!r} is invalid; allowed: an int >= 1")
        eps = self._standard_normal((int(num_samples), *mu.shape), mu, generator)  # (S, B, L)
        return mu + torch.exp(0.5 * logvar) * eps  # (S, B, L)

    def _log_px_given_z(
        self, z: torch.Tensor, x: torch.Tensor, chunk_size: int | None
    ) -> torch.Tensor:
        """``log p(x | z_s)`` for ``z`` ``(S, B, L)`` and ``x`` ``(B, D)`` -> ``(S, B)`` nats.

        Decodes ``chunk_size`` samples at a time so the ``(S, B, D)`` logits never coexist.
        """
        num_samples, batch = z.shape[0], z.shape[1]
        if chunk_size is None:
            chunk_size = max(1, _CHUNK_ELEMENTS // max(1, batch * self.data_dim))
        elif not _is_int(chunk_size) or chunk_size < 1:
            raise ConfigError(f"chunk_size={chunk_size!r} is invalid; allowed: an int >= 1")
        out = []
        for start in range(0, num_samples, chunk_size):
            z_c = z[start : start + chunk_size]  # (C, B, L)
            logits = self.decode(z_c).to(x.dtype)  # (C, B, D)
            out.append(bernoulli_log_likelihood(logits, x))  # (C, B)
        return torch.cat(out, dim=0)  # (S, B)

    # ------------------------------------------------------------------ model API
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters of ``q(z | x)``.

        Args:
            x: Inputs ``(B, D)`` or ``(B, *image_shape)``.

        Returns:
            ``(mu, logvar)``, each ``(B, L)`` (in the network's compute dtype).
        """
        x = self._flatten(x)  # (B, D)
        h = self.encoder(x.to(self._param_dtype()))  # (B, 2L)
        mu, logvar = h.chunk(2, dim=-1)  # (B, L) each
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits of ``p(x | z)``.

        Args:
            z: Latents ``(B, L)``; any leading shape ``(..., L)`` is allowed.

        Returns:
            Logits ``(B, D)`` (or ``(..., D)``), in the network's compute dtype.
        """
        lead = z.shape[:-1]
        logits = self.decoder(z.reshape(-1, self.latent_dim).to(self._param_dtype()))  # (N, D)
        return logits.reshape(*lead, self.data_dim)  # (..., D)

    def elbo(
        self,
        x: torch.Tensor,
        num_samples: int = 1,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Evidence lower bound on ``log p(x)`` per sample (Kingma & Welling 2014, Eq. 10).

        ``ELBO(x) = 1/S sum_s log p(x | z_s) - KL(q(z | x) || N(0, I))`` with reparameterised
        ``z_s = mu + exp(logvar / 2) * eps_s``, ``eps ~ N(0, I)`` drawn as one ``(S, B, L)``
        tensor, and the KL in closed form (Appendix B). Computed in (at least) float32.

        Args:
            x: Inputs in [0, 1], ``(B, D)`` or ``(B, *image_shape)``.
            num_samples: Monte-Carlo samples ``S >= 1`` averaged in the reconstruction term.
            generator: Optional RNG for ``eps`` (the global RNG is untouched when given).

        Returns:
            ELBO in nats, shape ``(B,)``.
        """
        x, mu, logvar = self._posterior(x)  # (B, D), (B, L), (B, L)
        z = self._reparameterise(mu, logvar, num_samples, generator)  # (S, B, L)
        log_px = self._log_px_given_z(z, x, None)  # (S, B)
        kl = gaussian_kl_to_standard_normal(mu, logvar)  # (B,)
        return log_px.mean(dim=0) - kl  # (B,)

    def iwae(
        self,
        x: torch.Tensor,
        num_samples: int = 64,
        generator: torch.Generator | None = None,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """Importance-weighted lower bound on ``log p(x)`` (Burda et al. 2016, Eq. 8).

        ``L_S(x) = log 1/S sum_s p(x | z_s) p(z_s) / q(z_s | x)``, ``z_s ~ q(z | x)``; tighter
        than the ELBO in expectation and non-decreasing in ``S``. ``eps`` is drawn as one
        ``(S, B, L)`` tensor (so the result does not depend on ``chunk_size``); the decoder
        runs over ``chunk_size`` samples at a time. Under ``torch.no_grad()`` memory is then
        bounded by the chunk; with gradients enabled autograd keeps every chunk.

        Args:
            x: Inputs in [0, 1], ``(B, D)`` or ``(B, *image_shape)``.
            num_samples: Importance samples ``S >= 1``.
            generator: Optional RNG for ``eps`` (the global RNG is untouched when given).
            chunk_size: Samples decoded at once; ``None`` picks one that keeps
                ``chunk * B * D`` around 4M elements.

        Returns:
            Bound in nats, shape ``(B,)``.
        """
        x, mu, logvar = self._posterior(x)  # (B, D), (B, L), (B, L)
        z = self._reparameterise(mu, logvar, num_samples, generator)  # (S, B, L)
        log_px = self._log_px_given_z(z, x, chunk_size)  # (S, B)
        log_pz = standard_normal_log_density(z)  # (S, B)
        log_qz = diagonal_gaussian_log_density(z, mu, logvar)  # (S, B)
        return iwae_bound(log_px + log_pz - log_qz)  # (B,)

    def log_likelihood(
        self,
        x: torch.Tensor,
        estimator: str | None = None,
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Estimate of ``log p(x)`` (a lower bound) used as the component's density.

        Args:
            x: Inputs in [0, 1], ``(B, D)`` or ``(B, *image_shape)``.
            estimator: ``"elbo"`` (:meth:`elbo`) or ``"iwae"`` (:meth:`iwae`); ``None`` uses
                the constructor's ``estimator``.
            num_samples: Samples ``S``; ``None`` uses the constructor's ``num_samples``.
            generator: Optional RNG for the latent noise.

        Returns:
            Log-likelihood estimate in nats, shape ``(B,)``.

        Raises:
            ConfigError: If ``estimator`` is unknown or ``num_samples < 1``.
        """
        estimator = self.estimator if estimator is None else estimator
        num_samples = self.num_samples if num_samples is None else num_samples
        if estimator == "elbo":
            return self.elbo(x, num_samples=num_samples, generator=generator)
        if estimator == "iwae":
            return self.iwae(x, num_samples=num_samples, generator=generator)
        raise ConfigError(f"estimator={estimator!r} is unknown; allowed: {', '.join(ESTIMATORS)}")

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw images from the model: pixel probabilities ``sigmoid(decode(z))``, ``z ~ N(0, I)``.

        Args:
            n: Number of samples (>= 0).
            generator: Optional RNG for ``z`` (the global RNG is untouched when given).

        Returns:
            Pixel probabilities in [0, 1], shape ``(n, *image_shape)``, float32 or wider.
        """
        if not _is_int(n) or n < 0:
            raise ConfigError(f"n={n!r} is invalid; allowed: an int >= 0")
        z = self._standard_normal((int(n), self.latent_dim), None, generator)  # (n, L)
        logits = self.decode(z)  # (n, D)
        probs = torch.sigmoid(logits.to(_loss_dtype(logits)))  # (n, D)
        return probs.reshape(int(n), *self.image_shape)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction: pixel probabilities ``sigmoid(decode(mu(x)))``.

        Args:
            x: Inputs ``(B, D)`` or ``(B, *image_shape)``.

        Returns:
            Pixel probabilities in [0, 1], shape ``(B, *image_shape)``, float32 or wider.
        """
        mu, _ = self.encode(x)  # (B, L)
        logits = self.decode(mu)  # (B, D)
        probs = torch.sigmoid(logits.to(_loss_dtype(logits)))  # (B, D)
        return probs.reshape(mu.shape[0], *self.image_shape)

    def weighted_negative_elbo(
        self,
        x: torch.Tensor,
        weights: torch.Tensor | None = None,
        norm: torch.Tensor | float | None = None,
        num_samples: int = 1,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Responsibility-weighted negative ELBO, the FedGMI M-step loss of component ``k``
        with ``w_i = r_ik`` (DESIGN.md step 3; Hou et al., arXiv 2605.08760).

        ``sum_i w_i (-ELBO(x_i)) / (B * norm)``. With ``norm=None`` it is the batch's mean
        weight, so the loss is ``sum_i w_i (-ELBO(x_i)) / sum_i w_i`` (what
        :meth:`training_step` uses); the federated worker passes the mean weight over the
        client's data instead, so that each batch is an unbiased estimate of the client's
        weighted mean (paper: silent; here: that normalisation). The one formula both paths
        use. If every weight is zero the result is ``0`` and still attached to the graph.
        Weights are not checked for sign (they must be >= 0).

        Args:
            x: Inputs in [0, 1], ``(B, D)`` or ``(B, *image_shape)``.
            weights: Per-sample weights ``(B,)`` >= 0; ``None`` means all ones (plain mean).
            norm: Normaliser (a scalar > 0), see above.
            num_samples: Monte-Carlo samples of the ELBO.
            generator: Optional RNG for the latent noise.

        Returns:
            Scalar loss in nats (per sample), float32 or wider.

        Raises:
            ConfigError: ``weights`` does not have the batch's shape ``(B,)``.
        """
        neg_elbo = -self.elbo(x, num_samples=num_samples, generator=generator)  # (B,)
        if weights is None:
            return neg_elbo.mean()
        if weights.shape != neg_elbo.shape:
            raise ConfigError(
                f"weights has shape {tuple(weights.shape)}; allowed: ({neg_elbo.shape[0]},) "
                "matching the batch"
            )
        w = weights.to(neg_elbo.dtype)  # (B,)
        if norm is None:
            norm = w.mean().clamp_min(torch.finfo(w.dtype).tiny)  # zero weights -> 0 / tiny = 0
        return (w * neg_elbo).mean() / norm

    # ------------------------------------------------------------------ Lightning hooks
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The component's density estimate, ``model(x)``: :meth:`log_likelihood` with the
        constructor's ``estimator`` and ``num_samples``.

        Args:
            x: Inputs in [0, 1], ``(B, D)`` or ``(B, *image_shape)``.

        Returns:
            Lower bound on ``log p(x)`` in nats, shape ``(B,)``.
        """
        return self.log_likelihood(x)

    @staticmethod
    def _unpack_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A batch -> ``(x, w or None)``; labels are accepted and ignored (see :meth:`training_step`)."""
        if isinstance(batch, torch.Tensor):
            return batch, None
        if isinstance(batch, (tuple, list)) and 1 <= len(batch) <= 3 and isinstance(batch[0], torch.Tensor):
            x, rest = batch[0], batch[1:]
            kinds = [_batch_field_kind(t, x.shape[0]) for t in rest]
            if kinds in ([], ["labels"], ["weights"], ["labels", "weights"]):
                return x, (rest[-1] if kinds and kinds[-1] == "weights" else None)
        raise ConfigError(
            f"batch {_describe_batch(batch)} is invalid; allowed: x, (x,), (x, y), (x, w) or "
            "(x, y, w), with x a tensor (B, ...), y integer labels (B,) and w float per-sample "
            "weights (B,), in the order (y, w)"
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Single-sample weighted negative ELBO (:meth:`weighted_negative_elbo`).

        Batches: ``x``, ``(x,)``, ``(x, y)``, ``(x, w)`` or ``(x, y, w)``. The element after
        ``x`` is told apart by its dtype: an integer tensor ``(B,)`` is class labels ``y``
        (ignored: the VAE models x alone; so a ``TensorDataset(images, labels)`` works as
        it is), a floating tensor ``(B,)`` is per-sample weights ``w >= 0`` (e.g.
        responsibilities ``r_ik``). Logs ``train/neg_elbo`` (nats per sample) per step
        (``train/neg_elbo_step``) and per epoch (``train/neg_elbo_epoch``: the weighted mean
        over the epoch, ``sum_i w_i (-ELBO_i) / sum_i w_i``).

        Args:
            batch: See above; ``x`` in [0, 1], ``(B, D)`` or ``(B, *image_shape)``.
            batch_idx: Unused.

        Returns:
            The scalar loss.

        Raises:
            ConfigError: A batch of another structure, dtype or batch size.
        """
        x, w = self._unpack_batch(batch)
        loss = self.weighted_negative_elbo(x, w)
        total_weight = torch.tensor(float(x.shape[0]), device=loss.device) if w is None else w.detach().sum()
        self._log_mean("train", "neg_elbo", loss.detach(), total_weight, on_step=True)
        return loss

    def _log_mean(self, stage: str, name: str, values: torch.Tensor, weights: torch.Tensor,
                  on_step: bool = False) -> None:
        """Add ``values`` with ``weights`` to the epoch mean ``<stage>/<name>`` and log it."""
        metric = self.epoch_means[f"{stage}_{name}"]
        metric(values, weights)  # forward: updates the epoch state, caches the batch mean
        self.log(f"{stage}/{name}", metric, on_step=on_step, on_epoch=True,
                 prog_bar=name in ("neg_elbo", "elbo"))

    def _evaluation_step(self, stage: str, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Add a batch's single-sample ELBO to ``stage``'s epoch means; returns ``(x, weights)``."""
        x, w = self._unpack_batch(batch)
        elbo = self.elbo(x)  # (B,)
        weights = torch.ones_like(elbo) if w is None else w.to(elbo.dtype)  # (B,)
        self._log_mean(stage, "elbo", elbo, weights)
        self._log_mean(stage, "elbo_bits_per_dim", -elbo / (self.data_dim * math.log(2.0)), weights)
        return x, weights

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Logs the epoch's ``val/elbo`` (mean single-sample ELBO, nats) and
        ``val/elbo_bits_per_dim`` (``-ELBO / (D ln 2)``).

        Both are exact means over the whole validation set (accumulated in torchmetrics'
        ``MeanMetric``), weighted by ``w`` when the batches carry weights.

        Args:
            batch: As :meth:`training_step`.
            batch_idx: Unused.
        """
        self._evaluation_step("val", batch)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """Logs ``test/elbo`` and ``test/elbo_bits_per_dim`` as :meth:`validation_step` does,
        and ``test/log_likelihood``: the mean of :meth:`forward` (the constructor's estimator
        and samples, e.g. an IWAE bound), in nats, with the same weights.

        Args:
            batch: As :meth:`training_step`.
            batch_idx: Unused.
        """
        x, weights = self._evaluation_step("test", batch)
        self._log_mean("test", "log_likelihood", self(x), weights)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        """Per-sample density and latent code (what ``Trainer.predict`` returns per batch).

        Args:
            batch: As :meth:`training_step` (labels and weights are ignored).
            batch_idx: Unused.
            dataloader_idx: Unused.

        Returns:
            ``{"log_likelihood": (B,), "latent_mean": (B, L)}``: :meth:`forward`'s lower bound
            on ``log p(x)`` in nats (the constructor's estimator and samples) and the posterior
            mean ``mu(x)`` of ``q(z | x)``.
        """
        x, _ = self._unpack_batch(batch)
        mu, _ = self.encode(x)  # (B, L)
        return {"log_likelihood": self(x), "latent_mean": mu.to(_loss_dtype(mu))}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over all parameters with the constructor's ``lr``."""
        return torch.optim.Adam(self.parameters(), lr=self.lr)
