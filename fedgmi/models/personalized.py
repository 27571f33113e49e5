"""Personalised prediction with a mixture of components (FedGMI step 6)."""

from __future__ import annotations

from collections.abc import Sequence

import lightning
import torch

from fedgmi.models.component_classifiers import ComponentClassifiers
from fedgmi.models.vae import ComponentVAE


def mixture_predict(
    log_pi: torch.Tensor, log_px: torch.Tensor, class_log_probs: torch.Tensor
) -> torch.Tensor:
    """p_c(y | x) = sum_k post_ck(x) p_k(y | x), with post_ck(x) proportional to pi_ck p_k(x).

    (DESIGN.md step 6; Hou et al., arXiv 2605.08760.) Computed in log space in float32.

    Args:
        log_pi: (K,) the client's log mixture proportions.
        log_px: (B, K) log p_k(x) of each component (nats).
        class_log_probs: (B, K, Y) log p_k(y | x).

    Returns:
        (B, Y) class probabilities; each row sums to 1.
    """
    log_post = torch.log_softmax(log_pi.float() + log_px.float(), dim=1)  # (B, K)
    return torch.logsumexp(log_post.unsqueeze(-1) + class_log_probs.float(), dim=1).exp()


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
    """

    def __init__(self, vaes: Sequence[ComponentVAE], classifiers: ComponentClassifiers, proportions: torch.Tensor,
                 estimator: str = "iwae", num_samples: int = 8) -> None:
        super().__init__()
        self.vaes = torch.nn.ModuleList(vaes)
        self.classifiers = classifiers
        self.register_buffer("log_pi", proportions.float().clamp_min(1e-12).log())
        self.estimator, self.num_samples = estimator, num_samples

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) or (B, *image_shape) inputs -> (B, num_classes) class probabilities."""
        log_px = torch.stack([vae.log_likelihood(x, self.estimator, self.num_samples).float()
                              for vae in self.vaes], dim=1)  # (B, K)
        return mixture_predict(self.log_pi, log_px, self.classifiers.class_log_probs(x))  # (B, K, Y) log p_k(y | x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x)

    def predict_step(self, batch, batch_idx: int = 0) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.predict(x)
