"""Failing and misbehaving clients: dropout simulation and server-side update screening.

Real federations lose clients mid-round and receive broken updates. The loop
(:mod:`fedgmi.federated.server`) drops each sampled client with a configured probability before
it trains (:func:`drop_clients`), and screens every reply before aggregation
(:func:`screen_replies`): a reply holding NaN or Inf, or a component update whose L2 norm is more
than ``max_norm_ratio`` times the round's median norm for that component, is left out. The
norm rule is the median-based outlier test of robust aggregation (cf. Blanchard et al., NeurIPS
2017; Yin et al., ICML 2018, coordinate-wise median): honest updates of one round have norms of
one order, a scaled or corrupted one stands out by orders of magnitude.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fedgmi.federated.messages import ClientReply


def drop_clients(client_ids: Sequence[int], probability: float, seed: int,
                 round_idx: int) -> tuple[list[int], list[int]]:
    """Simulate dropout: each sampled client independently fails to reply with ``probability``.

    Seeded by (seed, round) on a stream of its own, so client sampling is unchanged by it.

    Returns:
        (kept ids, dropped ids), both in the input order.
    """
    if probability <= 0:
        return list(client_ids), []
    rng = np.random.default_rng([int(seed), int(round_idx), 0xD20])
    drop = rng.random(len(client_ids)) < probability
    return ([c for c, d in zip(client_ids, drop) if not d],
            [c for c, d in zip(client_ids, drop) if d])


@dataclass
class Screening:
    """Result of :func:`screen_replies`.

    Attributes:
        accepted: Replies that go to aggregation, in input order.
        rejected: Client id -> reason (one line) for each reply left out.
    """

    accepted: list[ClientReply]
    rejected: dict[int, str] = field(default_factory=dict)


def _non_finite(reply: ClientReply) -> str | None:
    """Why a reply's updates are not finite, or ``None`` (its aggregation weights are checked
    when it is made, :class:`~fedgmi.federated.messages.ClientReply`)."""
    for k, u in enumerate(reply.updates or ()):
        if u is not None and not torch.isfinite(u).all():
            return f"non-finite update of component {k}"
    return None


def screen_replies(replies: Sequence[ClientReply], max_norm_ratio: float | None = 10.0) -> Screening:
    """Leave out replies with NaN/Inf, or with an update norm far beyond the round's median.

    For each component k, the median is the lower median of ||delta_ck||_2 over the finite
    replies that sent k; a reply is rejected when, for some k, ||delta_ck|| > ``max_norm_ratio``
    x median (with a positive median, and at least 3 senders of k: with fewer there is no
    majority to compare against). ``None`` disables the norm rule.

    Args:
        replies: The round's replies; ``updates`` hold (P,) deltas or ``None``.
        max_norm_ratio: The allowed ratio to the median, > 1, or ``None``.

    Returns:
        A :class:`Screening`.
    """
    rejected = {r.client_id: why for r in replies if (why := _non_finite(r))}
    finite = [r for r in replies if r.client_id not in rejected]
    if max_norm_ratio is not None:
        for k in range(max((len(r.updates or ()) for r in finite), default=0)):
            senders = [r for r in finite if r.updates and r.updates[k] is not None]
            if len(senders) < 3:
                continue
            norms = torch.stack([u.float().norm() for r in senders if (u := r.updates[k]) is not None])
            median = norms.median()
            for r, n in zip(senders, norms):
                if median > 0 and n > max_norm_ratio * median and r.client_id not in rejected:
                    rejected[r.client_id] = (f"update of component {k} has norm {n:.3g}, "
                                             f"{n / median:.3g}x the round's median {median:.3g}")
    return Screening([r for r in replies if r.client_id not in rejected], rejected)
