"""Server aggregation: pure functions, no state.

FedGMI step 5 (DESIGN.md): theta_k <- theta_k + sum_c w_ck * delta_ck / sum_c w_ck over the
clients c that sent component k, with w_ck = sum_i r_ik their responsibility mass. With w_ck = n_c
and one component this is FedAvg (McMahan et al. 2017, Algorithm 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def weighted_average(updates: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """sum_c w_c u_c / sum_c w_c, accumulated in float32.

    Args:
        updates: C tensors of one shape.
        weights: C non-negative weights with a positive sum.

    Raises:
        ValueError: no updates, a length mismatch, a negative weight or a zero total weight.
    """
    if len(updates) == 0 or len(updates) != len(weights):
        raise ValueError(f"need as many weights ({len(weights)}) as updates ({len(updates)}) > 0")
    w = torch.as_tensor([float(v) for v in weights], dtype=torch.float32)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {w.tolist()}")
    stacked = torch.stack([u.float() for u in updates])  # (C, *shape)
    w = (w / w.sum()).to(stacked.device).view(-1, *([1] * (stacked.dim() - 1)))
    return (w * stacked).sum(0)


def aggregate_components(
    global_state: Sequence[torch.Tensor],
    updates: Sequence[Sequence[torch.Tensor | None]],
    weights: Sequence[Sequence[float]],
    step: float = 1.0,
) -> list[torch.Tensor]:
    """Per-component weighted averaging of client deltas (FedGMI step 5).

    Args:
        global_state: K (P,) current component parameter vectors.
        updates: per client, K deltas (P,) or ``None`` for a component it did not send.
        weights: per client, K aggregation weights w_ck.
        step: Scale of the averaged delta (1: the average itself; see
            :class:`~fedgmi.federated.strategy.ParameterVectorStrategy` for the rules).

    Returns:
        K new (P,) parameter vectors; a component no client sent is unchanged.
    """
    new_state = []
    for k, theta in enumerate(global_state):
        pairs = [(u[k], w[k]) for u, w in zip(updates, weights) if u[k] is not None and w[k] > 0]
        if not pairs:
            new_state.append(theta)
            continue
        delta = weighted_average([p[0] for p in pairs if p[0] is not None], [p[1] for p in pairs])
        if step != 1.0:
            delta = step * delta
        new_state.append(theta + delta.to(theta.dtype))
    return new_state
