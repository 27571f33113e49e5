"""A FedGMI mixture component: a VAE density model of x plus a classifier head p(y | x)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedgmi.models.heads import weighted_cross_entropy
from fedgmi.models.vae import ComponentVAE


class MixtureComponent(nn.Module):
    """One component k: ``vae`` gives log p_k(x), ``head`` (optional) gives p_k(y | x).

    Its parameters, flattened in ``named_parameters`` order (VAE first, then head), are what
    the federation averages.
    """

    def __init__(self, vae: ComponentVAE, head: nn.Module | None = None) -> None:
        super().__init__()
        self.vae = vae
        self.head = head

    def class_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) inputs -> (B, num_classes) log p_k(y | x), float32.

        Raises:
            RuntimeError: the component has no head.
        """
        if self.head is None:
            raise RuntimeError("this component has no classifier head")
        return F.log_softmax(self.head(x).float(), dim=-1)

    def loss(self, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, norm: torch.Tensor,
             generator: torch.Generator | None = None, head_weights: torch.Tensor | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Responsibility-weighted negative ELBO and cross-entropy (FedGMI M-step).

        Both are sum_i w_i * loss_i / (B * norm), with ``norm`` the mean weight of the client's
        data for this component, so a batch is an unbiased estimate of the weighted mean
        (:meth:`ComponentVAE.weighted_negative_elbo`,
        :func:`~fedgmi.models.heads.weighted_cross_entropy`).

        Args:
            x: (B, D) inputs; y: (B,) labels; weights: (B,) responsibilities r_ik.
            head_weights: (B,) weights of the cross-entropy; default ``weights``.

        Returns:
            ``(neg_elbo, cross_entropy)`` scalars in nats (cross-entropy 0 without a head).
        """
        neg_elbo = self.vae.weighted_negative_elbo(x, weights, norm, generator=generator)
        if self.head is None:
            return neg_elbo, torch.zeros((), device=x.device)
        head_weights = weights if head_weights is None else head_weights
        return neg_elbo, weighted_cross_entropy(self.head(x), y, head_weights, norm)
