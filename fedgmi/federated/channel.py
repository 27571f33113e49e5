"""The communication channel between server and clients: codecs both ways, partial component
upload, an uplink byte budget, and honest byte accounting. It works for every strategy: the
round loop calls :meth:`Channel.downlink` on the round's tasks and :meth:`Channel.uplink` on each
reply (encode on the client side, count the bytes, decode on the server side).

Downlink. A lossless downlink (:class:`~fedgmi.federated.compression.Identity`, the default)
passes tasks through. With a lossy one the server keeps an exact copy h_ck of what each client
c holds of component k: before its first contact, the round-0 global state (:meth:`Channel.start`;
paper: silent, here: every client builds the same initial models from the run's seed, as the
server does, so the first contact sends what was learned since, not the whole model; zero when
the loop gives no round-0 state); a sampled client receives encode(theta_k - h_ck), both sides
add the decoded difference to h_ck, and the client trains from h_ck (its deltas are relative
to it). Clients not sampled receive nothing and keep their
stale copy; what they missed is in theta_k - h_ck and arrives when they are next sampled.
Evaluation uses the server's theta.

Uplink, in order: (1) partial upload keeps component k when its responsibility mass share
w_ck / n_c is at least ``upload_threshold`` and k is among the ``upload_top_m`` heaviest
(dropped components are discarded, not kept as residual); (2) a budget of
``uplink_budget_bytes`` per client per round (updates plus the aggregation weights and
statistics) is split
evenly over the components left; a sparsifier lowers its k to fit, any other codec fits or
not; while it does not fit, the lightest component is dropped and the client-round is counted
in ``budget_unmet_clients`` (with a one-line warning the first time); (3) each update is
encoded with the client's per-component codec state (error-feedback residuals) and decoded.

Metric keys (cumulative over the rounds, not counting a strategy's initialisation stage):
``bytes_up_rounds`` / ``bytes_down_rounds`` (bytes sent), ``compression_ratio_up`` /
``compression_ratio_down`` (float32 size of what the strategy produced / bytes sent),
``budget_unmet_clients`` (client-rounds that could not fit the budget).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from fedgmi.errors import ConfigError
from fedgmi.federated.compression import Codec, Identity
from fedgmi.federated.messages import ClientReply, ClientTask, derive_seed, tensor_bytes

UPLINK, DOWNLINK = 1, 2  # stream tags mixed into the codec seeds


class Channel:
    """Uplink/downlink codecs, partial upload and a byte budget, with per-client state.

    Args:
        uplink: Codec of client updates (default Identity: float32, exact).
        downlink: Codec of the global state sent to clients (default Identity).
        upload_threshold: Send component k only when w_ck / n_c is at least this, in [0, 1]
            (0 = every component the strategy produced).
        upload_top_m: Send at most the m components of largest w_ck (``None`` = all).
        uplink_budget_bytes: Most bytes a client may upload per round, everything included
            (``None`` = no limit).

    Raises:
        ConfigError: an out-of-range value (one line).
    """

    def __init__(self, uplink: Codec | None = None, downlink: Codec | None = None,
                 upload_threshold: float = 0.0, upload_top_m: int | None = None,
                 uplink_budget_bytes: int | None = None) -> None:
        if not 0 <= upload_threshold <= 1:
            raise ConfigError(f"channel.upload_threshold = {upload_threshold!r} must be in [0, 1]")
        if upload_top_m is not None and (int(upload_top_m) != upload_top_m or upload_top_m < 1):
            raise ConfigError(f"channel.upload_top_m = {upload_top_m!r} must be an integer >= 1 or null")
        if uplink_budget_bytes is not None and (int(uplink_budget_bytes) != uplink_budget_bytes
                                                or uplink_budget_bytes < 1):
            raise ConfigError(f"channel.uplink_budget_bytes = {uplink_budget_bytes!r} "
                              "must be an integer >= 1 or null")
        self.uplink_codec, self.downlink_codec = uplink or Identity(), downlink or Identity()
        self.upload_threshold, self.upload_top_m = float(upload_threshold), upload_top_m
        self.uplink_budget_bytes = uplink_budget_bytes
        self.residuals: dict[int, dict[int, dict[str, torch.Tensor]]] = {}  # client -> k -> state
        self.held: dict[int, list[torch.Tensor]] = {}  # client -> K copies (lossy downlink)
        self.initial: list[torch.Tensor] | None = None  # the round-0 state every client can build
        self.counters = {"raw_up": 0, "sent_up": 0, "raw_down": 0, "sent_down": 0, "budget_unmet_clients": 0}

    # ------------------------------------------------------------------ downlink
    def start(self, global_state: Sequence[torch.Tensor]) -> None:
        """Record the round-0 global state: what every client holds before its first contact
        (a lossy downlink then sends it what changed since; see the module docstring)."""
        if not self.downlink_codec.lossless:
            self.initial = [t.detach().clone() for t in global_state]

    def downlink(self, tasks: Sequence[ClientTask]) -> list[ClientTask]:
        """The tasks as clients receive them (their ``payload_bytes`` set when encoded)."""
        out = [self._send_down(t) for t in tasks]
        self.counters["raw_down"] += sum(tensor_bytes(t.global_state) for t in tasks)
        self.counters["sent_down"] += sum(t.bytes_down for t in out)
        return out

    def _send_down(self, task: ClientTask) -> ClientTask:
        if self.downlink_codec.lossless:
            return task
        if task.client_id not in self.held:
            start = self.initial or [torch.zeros_like(t) for t in task.global_state]
            self.held[task.client_id] = [t.to(s.device).clone() for t, s in zip(start, task.global_state)]
        held = self.held[task.client_id]
        nbytes = 0
        for k, theta in enumerate(task.global_state):
            gen = _generator(task.seed, k, DOWNLINK, theta.device)
            payload = self.downlink_codec.encode(theta - held[k], None, gen)
            held[k] = held[k] + self.downlink_codec.decode(payload).view_as(theta).to(theta.dtype)
            nbytes += payload.nbytes
        return dataclasses.replace(task, global_state=tuple(held), payload_bytes=nbytes)

    # ------------------------------------------------------------------ uplink
    def uplink(self, task: ClientTask, reply: ClientReply) -> ClientReply:
        """The reply as the server decodes it (its ``payload_bytes`` set to the bytes sent)."""
        selected = self.select_components(reply)
        codecs = self._fit_budget(reply, selected, task.round)
        state = self.residuals.setdefault(reply.client_id, {})
        decoded: list[torch.Tensor | None] = []
        nbytes = 0
        for k, update in enumerate(reply.updates):
            codec = codecs[k]
            if update is None or codec is None:
                decoded.append(None)
                continue
            payload = codec.encode(update, state.setdefault(k, {}), _generator(task.seed, k, UPLINK, update.device))
            decoded.append(codec.decode(payload).view_as(update).to(update.dtype))
            nbytes += payload.nbytes
        out = dataclasses.replace(reply, updates=tuple(decoded), payload_bytes=nbytes)
        self.counters["raw_up"] += reply.bytes_up
        self.counters["sent_up"] += out.bytes_up
        return out

    def select_components(self, reply: ClientReply) -> list[int]:
        """Components k the partial-upload policy lets the client send, heaviest w_ck first."""
        weights = reply.aggregation_weights.float()
        order = torch.argsort(weights, descending=True, stable=True).tolist()
        share = weights / max(reply.num_examples, 1)
        keep = [k for k in order if reply.updates[k] is not None and float(share[k]) >= self.upload_threshold]
        return keep[: self.upload_top_m] if self.upload_top_m is not None else keep

    def _fit_budget(self, reply: ClientReply, selected: list[int], round_idx: int) -> list[Codec | None]:
        """Per component, the codec that fits the budget, or ``None`` (not sent)."""
        codecs: list[Codec | None] = [None] * len(reply.updates)
        if self.uplink_budget_bytes is None:
            for k in selected:
                codecs[k] = self.uplink_codec
            return codecs
        left = self.uplink_budget_bytes - tensor_bytes([reply.aggregation_weights, *reply.statistics.values()])
        wanted = len(selected)
        while selected:
            share = left // len(selected)
            fitted = [self.uplink_codec.limited(_size(reply.updates[k]), share) for k in selected]
            if all(c is not None for c in fitted):
                break
            selected = selected[:-1]  # drop the lightest component
        else:
            fitted = []
        if len(selected) < wanted:
            self._report_unmet(reply.client_id, round_idx)
        for k, codec in zip(selected, fitted):
            codecs[k] = codec
        return codecs

    def _report_unmet(self, client_id: int, round_idx: int) -> None:
        if self.counters["budget_unmet_clients"] == 0:
            warnings.warn(f"uplink_budget_bytes = {self.uplink_budget_bytes} cannot be met by client "
                          f"{client_id} in round {round_idx}: components dropped; every such client-round "
                          "is counted in the metric budget_unmet_clients", stacklevel=3)
        self.counters["budget_unmet_clients"] += 1

    # ------------------------------------------------------------------ reports and state
    def metrics(self) -> dict[str, float]:
        """Cumulative compression ratios and budget misses (see the module docstring)."""
        c = self.counters
        return {"bytes_up_rounds": c["sent_up"], "bytes_down_rounds": c["sent_down"],
                "compression_ratio_up": c["raw_up"] / max(c["sent_up"], 1),
                "compression_ratio_down": c["raw_down"] / max(c["sent_down"], 1),
                "budget_unmet_clients": c["budget_unmet_clients"]}

    def state_dict(self) -> dict[str, Any]:
        """Residuals, held copies, the round-0 state and counters (tensors and plain
        containers, on the CPU)."""
        return {
            "residuals": {c: {k: {n: t.cpu() for n, t in s.items()} for k, s in per.items()}
                          for c, per in self.residuals.items()},
            "held": {c: [t.cpu() for t in ts] for c, ts in self.held.items()},
            "initial": None if self.initial is None else [t.cpu() for t in self.initial],
            "counters": dict(self.counters),
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        """Restore what :meth:`state_dict` returned, tensors onto ``device``."""
        self.residuals = {int(c): {int(k): {n: t.to(device) for n, t in s.items()} for k, s in per.items()}
                          for c, per in state["residuals"].items()}
        self.held = {int(c): [t.to(device) for t in ts] for c, ts in state["held"].items()}
        initial = state.get("initial")  # absent in checkpoints written before it existed
        self.initial = None if initial is None else [t.to(device) for t in initial]
        self.counters = {**self.counters, **{k: int(v) for k, v in state["counters"].items()}}


def _size(update: torch.Tensor | None) -> int:
    """Elements of a selected update (selection keeps only updates that were sent)."""
    assert update is not None, "a selected component was sent"
    return int(update.numel())


def _generator(seed: int, component: int, stream: int, device: torch.device) -> torch.Generator:
    """The codec randomness of one (client-round seed, component, direction)."""
    return torch.Generator(device).manual_seed(derive_seed(seed, component, stream))
