"""``python -m fedgmi.flower.supernode [--poll-s S] <flower-supernode arguments>``: Flower's own
SuperNode (``flwr.supernode.cli.flower_supernode``, every argument passed on) with shorter idle
waits.

Flower 1.42's SuperNode sleeps 3 s whenever the SuperLink has no message for it, and 0.5 s
between its checks for a ClientApp's reply (``flwr/supernode/start_client_internal.py``, fixed
numbers, no option). A fedgmi round is several messages (the round's tasks, then the
evaluation's two client steps), so a node idles up to 3 s before each: more than an in-process
round of ``configs/pm_digits.yaml`` takes. This launcher caps those waits at ``--poll-s`` seconds
(default 0.1) by giving that one Flower module a ``time`` whose ``sleep`` is capped, and shortens
the retry waits of its object pulls from the SuperLink (:mod:`fedgmi.flower.pulls`); nothing else
of Flower changes. The price: the node asks the SuperLink for messages up to 1/poll-s times a
second while idle (measured in ``benchmarks/flower_loopback.py``, the SuperLink's CPU seconds).
"""

from __future__ import annotations

import sys
import time
import types

DEFAULT_POLL_S = 0.1


def capped_time(poll_s: float) -> types.ModuleType:
    """A stand-in for the ``time`` module whose ``sleep(s)`` sleeps ``min(s, poll_s)`` seconds."""
    module = types.ModuleType("time")
    module.__dict__.update({k: v for k, v in vars(time).items() if not k.startswith("__")})
    module.sleep = lambda seconds: time.sleep(min(float(seconds), poll_s))  # type: ignore[attr-defined]
    return module


def main(argv: list[str] | None = None) -> None:
    """Run Flower's SuperNode with the capped waits (see the module docstring).

    Raises:
        SystemExit: status 2 with one line for a bad ``--poll-s``; else the SuperNode's own.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    poll_s = DEFAULT_POLL_S
    if "--poll-s" in args:
        i = args.index("--poll-s")
        try:
            poll_s = float(args[i + 1])
            if not 0.01 <= poll_s <= 3.0:
                raise ValueError
        except (IndexError, ValueError):
            print(f"fedgmi: error: --poll-s = {args[i + 1] if i + 1 < len(args) else None!r} must be a number of "
                  "seconds in 0.01 .. 3", file=sys.stderr)
            raise SystemExit(2) from None
        del args[i:i + 2]
    from flwr.supernode import start_client_internal
    from flwr.supernode.cli import flower_supernode

    from fedgmi.flower.pulls import shorten_pull_backoff

    start_client_internal.time = capped_time(poll_s)  # type: ignore[attr-defined]
    shorten_pull_backoff()
    sys.argv = ["flower-supernode", *args]
    flower_supernode()


if __name__ == "__main__":
    main()
