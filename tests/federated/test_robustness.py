"""Dropout simulation and server-side screening of replies."""

import pytest
import torch

from fedgmi.federated.messages import ClientReply
from fedgmi.federated.robustness import drop_clients, screen_replies


def reply(client_id, *updates, weights=None):
    k = len(updates)
    w = torch.ones(k) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    return ClientReply(client_id, 10, w, tuple(updates))


def honest(client_id, k=2, p=50):
    gen = torch.Generator().manual_seed(client_id)
    return reply(client_id, *[torch.randn(p, generator=gen) * 0.1 for _ in range(k)])


def test_dropout_is_seeded_independent_of_sampling_and_has_the_asked_rate():
    ids = list(range(100))
    kept, dropped = drop_clients(ids, 0.3, seed=4, round_idx=2)
    assert (kept, dropped) == drop_clients(ids, 0.3, seed=4, round_idx=2)
    assert sorted(kept + dropped) == ids and set(kept).isdisjoint(dropped)
    rate = sum(len(drop_clients(ids, 0.3, 4, r)[1]) for r in range(50)) / 5000
    assert rate == pytest.approx(0.3, abs=0.02)
    assert drop_clients(ids, 0.0, 4, 2) == (ids, [])


def test_nan_inf_and_scaled_updates_are_rejected_with_a_reason():
    replies = [honest(c) for c in range(5)]
    bad_nan = reply(5, torch.full((50,), float("nan")), None)
    bad_inf = reply(6, None, torch.full((50,), float("inf")))
    scaled = reply(7, replies[0].updates[0] * 1e6, replies[0].updates[1])
    out = screen_replies([*replies, bad_nan, bad_inf, scaled], max_norm_ratio=10.0)
    assert [r.client_id for r in out.accepted] == [0, 1, 2, 3, 4]
    assert set(out.rejected) == {5, 6, 7}
    assert "component 0" in out.rejected[5] and "component 1" in out.rejected[6]
    assert "median" in out.rejected[7]


def test_norm_rule_needs_three_senders_and_can_be_disabled():
    a, b = honest(0), honest(1)
    scaled = reply(2, a.updates[0] * 1e6, a.updates[1] * 1e6)
    assert len(screen_replies([a, scaled]).accepted) == 2  # two senders: no majority
    assert len(screen_replies([a, b, scaled]).accepted) == 2
    assert len(screen_replies([a, b, scaled], max_norm_ratio=None).accepted) == 3


def test_honest_updates_of_different_sizes_pass():
    replies = [reply(c, torch.randn(40, generator=torch.Generator().manual_seed(c)) * s)
               for c, s in enumerate([0.5, 1.0, 2.0, 3.0, 1.5])]
    assert len(screen_replies(replies, 10.0).accepted) == 5
