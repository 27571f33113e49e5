"""Clients spread over processes (devices, nodes) with Fabric's collectives.

With ``fabric.world_size = W > 1`` every rank holds the same global state, runs the local
updates of its slice of the round's clients (tasks ``rank, rank + W, ...``), and the ranks then
exchange the replies and the clients' new state with ``all_gather_object``, so that every rank
aggregates the same replies in the same (client id) order: the global model after any round is
bit-identical on 1 or W processes. Client models are never wrapped in DDP: ranks train different
clients. The launch (``fabric.launch()``, or ``torchrun`` / ``fabric run`` for several nodes) and
the process group (gloo on CPU, NCCL on CUDA) are Fabric's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import lightning
import torch

T = TypeVar("T")


def my_slice(fabric: lightning.Fabric, items: Sequence[T]) -> list[T]:
    """This rank's share of ``items``: positions rank, rank + W, ... (all of them when W = 1)."""
    return list(items[fabric.global_rank::fabric.world_size])


def gather(fabric: lightning.Fabric, obj: T) -> list[T]:
    """Every rank's ``obj`` in rank order (``[obj]`` on one process); ``obj`` is pickled, so
    tensors in it are moved to the CPU first by the caller."""
    if fabric.world_size == 1:
        return [obj]
    gathered: list[Any] = [None] * fabric.world_size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def any_rank(fabric: lightning.Fabric, flag: bool) -> bool:
    """True on every rank when ``flag`` is True on some rank (e.g. a stop request)."""
    if fabric.world_size == 1:
        return bool(flag)
    return bool(fabric.all_reduce(torch.tensor(float(flag)), reduce_op="max") > 0)
