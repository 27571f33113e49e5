"""Shorter retry waits for Flower's object pulls.

Flower 1.42 moves a message as a tree of objects: the receiver first learns the message, then
pulls its objects (``flwr.supercore.inflatable.inflatable_utils.pull_objects``). An object the
sender has not finished pushing answers "unavailable", and the receiver waits 1 s before it asks
again, doubling up to 10 s (``PULL_INITIAL_BACKOFF``, ``PULL_BACKOFF_CAP``; no option). On a fast
network that first wait is the common case, not the exception: a ClientApp task is handed out
before its node has pulled the message's objects from the SuperLink, and a reply is listed
before its objects arrive. Measured (``benchmarks/flower_loopback.py``, configs/pm_digits.yaml,
idle 2-core machine): 1.0-1.7 s per message pulled by the ClientApp, against 0.3 s to push the
reply.

:func:`shorten_pull_backoff` makes those waits start at :data:`INITIAL_BACKOFF_S` and stop
doubling at :data:`BACKOFF_CAP_S`, in the process that calls it. fedgmi calls it in each of its
Flower processes: the ServerApp, the SuperNode launcher (:mod:`fedgmi.flower.supernode`) and the
long-lived ClientApp (:mod:`fedgmi.flower.worker`). It changes when a pull is retried, never what
is pulled; the price is at most a few more requests per message while an object is on its way.
The number of tries grows so that an object may stay unavailable as long as Flower allows
(500 tries of up to 10 s).
"""

from __future__ import annotations

import math

#: Seconds before the first retry of an unavailable object (Flower's: 1 s).
INITIAL_BACKOFF_S = 0.02
#: The longest wait between two retries, seconds (Flower's: 10 s).
BACKOFF_CAP_S = 1.0


def shorten_pull_backoff(initial_s: float = INITIAL_BACKOFF_S, cap_s: float = BACKOFF_CAP_S) -> None:
    """Make Flower's object pulls in this process retry after ``initial_s`` seconds, doubling up
    to ``cap_s``, with as many tries as give an object Flower's own patience (the defaults of ``pull_objects`` and ``pull_and_inflate_object_from_tree``,
    which every caller in Flower 1.42 leaves as they are). Calling it again sets new values.

    Raises:
        ValueError: ``initial_s`` <= 0 or ``cap_s`` < ``initial_s``.
    """
    if not 0 < initial_s <= cap_s:
        raise ValueError(f"initial_s = {initial_s!r}, cap_s = {cap_s!r}: need 0 < initial_s <= cap_s seconds")
    from flwr.supercore.constant import PULL_BACKOFF_CAP, PULL_MAX_TRIES_PER_OBJECT
    from flwr.supercore.inflatable import inflatable_utils

    tries = math.ceil(PULL_MAX_TRIES_PER_OBJECT * PULL_BACKOFF_CAP / cap_s)

    for function in (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree):
        function.__kwdefaults__ = {**(function.__kwdefaults__ or {}), "initial_backoff": initial_s,
                                   "backoff_cap": cap_s, "max_tries_per_object": tries}
