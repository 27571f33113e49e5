"""Personalised prediction with a mixture of components (FedGMI step 6)."""

from __future__ import annotations

from collections.abc import Sequence

import lightning
import torch

from fedgmi.models.component_classifiers import ComponentClassifiers
from fedgmi.models.vae import ComponentVAE


def mixture_log_predict(
    log_pi: torch.Tensor, log_px: torch.Tensor, class_log_probs: torch.Tensor, density_weight: float = 1.0
) -> torch.Tensor:
    """log p_c(y | x) = log sum_k post_ck(x) p_k(y | x), post_ck(x) proportional to
    pi_ck p_k(x)^tau (tau = ``density_weight``).

    Paper (Hou et al., arXiv 2605.08760; DESIGN.md step 6): tau = 1, the exact posterior of the
    mixture. Here: tau is a setting because density estimates carry errors of a few nats; where
    the components' p_k(x) are truly equal (a pure label permutation) those errors alone would
    route each sample, and tau = 0 falls back on the client's proportions
    (:class:`~fedgmi.algorithms.gmi.FedGMI` chooses tau on held-out data). Float32, log space.

    Args:
        log_pi: (K,) the client's log mixture proportions.
        log_px: (B, K) log p_k(x) of each component (nats).
        class_log_probs: (B, K, Y) log p_k(y | x).
        density_weight: tau >= 0.

    Returns:
        (B, Y) log class probabilities (nats); each row's exp sums to 1.
    """
    log_post = torch.log_softmax(log_pi.float() + density_weight * log_px.float(), dim=1)  # (B, K)
    return torch.logsumexp(log_post.unsqueeze(-1) + class_log_probs.float(), dim=1)


def mixture_predict(
    log_pi: torch.Tensor, log_px: torch.Tensor, class_log_probs: torch.Tensor, density_weight: float = 1.0
) -> torch.Tensor:
    """p_c(y | x) = sum_k post_ck(x) p_k(y | x), with post_ck(x) proportional to
    pi_ck p_k(x)^tau: (B, Y) class probabilities, each row summing to 1 (see
    :func:`mixture_log_predict` for the shapes and the source)."""
    return mixture_log_predict(log_pi, log_px, class_log_probs, density_weight).exp()


def density_weight_scores(log_pi: torch.Tensor, log_px: torch.Tensor, class_log_probs: torch.Tensor,
                          y: torch.Tensor, density_weights: Sequence[float]) -> torch.Tensor:
    """The labels' log-likelihood under the personalised prediction for each candidate tau.

    Args:
        log_pi: (K,) log proportions; log_px: (B, K) log p_k(x); class_log_probs: (B, K, Y).
        y: (B,) labels.
        density_weights: G candidate values of tau.

    Returns:
        (G,) float64 sum_i log p_c(y_i | x_i; tau_g) in nats (higher is better).
    """
    rows = torch.arange(len(y), device=log_px.device)
    return torch.stack([mixture_log_predict(log_pi, log_px, class_log_probs, float(t))[rows, y].double().sum()
                        for t in density_weights])


class PersonalizedMixture(lightning.LightningModule):
    """A client's personalised model: K trained VAEs, the K class predictors and the client's
    proportions.

    Use ``predict(x)`` directly, or ``lightning.Trainer.predict`` (batches are ``x`` or
    ``(x, ...)``).

    Args:
        vaes: K trained :class:`ComponentVAE` (log p_k(x)).
        classifiers: The K class predictors, (B, D) -> (B, K, Y) logits (a shared body with K
            heads, or K whole classifiers; :class:`ComponentClassifiers`).
        proportions: (K,) the client's mixture proportions pi_c.
        estimator: log p_k(x) estimate, "elbo" or "iwae"; num_samples: its samples.
        density_weight: tau of the routing, post_ck(x) proportional to pi_ck p_k(x)^tau (see
            :func:`mixture_log_predict`).
    """

    def __init__(self, vaes: Sequence[ComponentVAE], classifiers: ComponentClassifiers, proportions: torch.Tensor,
                 estimator: str = "iwae", num_samples: int = 8, density_weight: float = 1.0) -> None:
        super().__init__()
        self.vaes = torch.nn.ModuleList(vaes)
        self.classifiers = classifiers
        self.register_buffer("log_pi", proportions.float().clamp_min(1e-12).log())
        self.estimator, self.num_samples, self.density_weight = estimator, num_samples, density_weight

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) or (B, *image_shape) inputs -> (B, num_classes) class probabilities."""
        log_px = torch.stack([vae.log_likelihood(x, self.estimator, self.num_samples).float()
                              for vae in self.vaes], dim=1)  # (B, K)
        class_log_probs = self.classifiers.class_log_probs(x)  # (B, K, Y) log p_k(y | x)
        return mixture_predict(self.log_pi, log_px, class_log_probs, self.density_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x)

    def predict_step(self, batch, batch_idx: int = 0) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.predict(x)
