"""FedGMI's K class predictors p_k(y | x) as one module: an optional shared body and K heads.

``shared_body`` (FedGMI's default, issue 15): z = body(x) is trained by every client on all its
samples and averaged FedAvg-style; head k is a small map z -> logits trained with the
responsibilities r_ik and averaged per component with the responsibility mass. A routing error
then costs little: every head reads the same features. ``separate`` (the paper's layout): no
body, head k is a whole classifier of x (e.g. :class:`~fedgmi.models.heads.CNNClassifier`).

Parameters flatten in ``parameters()`` order: the body's first, then head 0, ..., head K-1, so
a (P_body + K P_head,) vector splits into the body's and each head's part by
:meth:`ComponentClassifiers.split_sizes`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

HeadFactory = Callable[[], nn.Module]


class ComponentClassifiers(nn.Module):
    """K heads on a shared body: (B, D) inputs -> (B, K, Y) logits.

    Args:
        heads: K modules mapping body features (or x itself, without a body) to (B, Y) logits.
        body: Module (B, D) -> (B, d) features, or ``None`` (the heads read x).
    """

    def __init__(self, heads: Sequence[nn.Module], body: nn.Module | None = None) -> None:
        super().__init__()
        self.body = body if body is not None else nn.Identity()
        self.heads = nn.ModuleList(heads)

    @property
    def num_components(self) -> int:
        return len(self.heads)

    def split_sizes(self) -> tuple[int, list[int]]:
        """(P_body, [P_head_k for each k]): the sizes of the flat vector's parts."""
        body = sum(p.numel() for p in self.body.parameters())
        return body, [sum(p.numel() for p in h.parameters()) for h in self.heads]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) inputs -> (B, K, Y) logits of every head."""
        z = self.body(x)
        return torch.stack([head(z) for head in self.heads], dim=1)

    def class_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) inputs -> (B, K, Y) log p_k(y | x), float32."""
        return F.log_softmax(self(x).float(), dim=-1)


def responsibility_weighted_cross_entropy(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor,
                                          norm: torch.Tensor | float) -> torch.Tensor:
    """sum_i sum_k w_ik CE(logits_ik, y_i) / (B * norm) for a batch: FedGMI's M-step for the
    heads (each head's cross-entropy weighted by the responsibilities, FedEM eq. 9 / paper:
    Hou et al. Sec. 4), summed over components so that the shared body sees every sample with
    its total weight sum_k w_ik (here: ``norm`` = mean_i sum_k w_ik over the client's data, so a
    batch is an unbiased estimate of the client's weighted mean).

    Args:
        logits: (B, K, Y) class logits; y: (B,) labels; weights: (B, K) w_ik >= 0.
        norm: The normaliser, a scalar > 0.

    Returns:
        Scalar float32 loss in nats.
    """
    b, k, c = logits.shape
    ce = F.cross_entropy(logits.float().reshape(b * k, c), y.repeat_interleave(k), reduction="none")
    return (weights.float() * ce.view(b, k)).sum(1).mean() / norm


def mixture_of_experts_nll(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor,
                           norm: torch.Tensor | float = 1.0) -> torch.Tensor:
    """-log sum_k w_ik p_k(y_i | x_i), batch mean / ``norm``: the negative log-likelihood of
    the personalised prediction p_c(y | x) = sum_k post_ck(x) p_k(y | x) (DESIGN step 6) with the
    responsibilities as the gate (paper: Hou et al. train each head on its component's
    samples; here: the heads and the body are fitted to the rule that predicts, a mixture of
    experts, Jacobs et al. 1991, eq. 1, with the gate fixed by the E-step). Its gradient
    weighs head k by q_ik = w_ik p_k(y_i | x_i) / sum_j w_ij p_j(y_i | x_i), the posterior of
    component k given x_i and y_i.

    Args:
        logits: (B, K, Y) class logits; y: (B,) labels; weights: (B, K) gate w_ik >= 0 (rows
            summing to 1; rows of zeros are left out).
        norm: The normaliser, a scalar > 0 (the mean row sum over the client's data).

    Returns:
        Scalar float32 loss in nats.
    """
    log_py = F.log_softmax(logits.float(), dim=-1).gather(2, y[:, None, None].expand(-1, logits.shape[1], 1))[..., 0]
    mass = weights.float().sum(1)  # (B,)
    log_gate = (weights.float() / mass.clamp_min(1e-30)[:, None]).clamp_min(1e-30).log()
    nll = -torch.logsumexp(log_gate + log_py, dim=1)  # (B,)
    return (nll * (mass > 0)).mean() / norm
