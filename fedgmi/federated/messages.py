"""What crosses the client/server boundary, and nothing else (frozen dataclasses that check
themselves on construction).

Down (:class:`ClientTask`): the round, the client id, the global state (M flat parameter
vectors), scalar settings, a seed derived from (seed, round, client id), and the sizes of the
updates the server expects back. Up (:class:`ClientReply`): the client id, its example count
n_c, one update per expected size with its aggregation weight, small per-client statistics the
server's rule needs (FedSoft's importances), scalar metrics, and the honest byte count. Raw data
never crosses.

One name per quantity: *aggregation weights* are what the server averages updates with
(w_ck = sum_i r_ik for FedGMI, n_c for FedAvg); per-sample *training weights* (r_ik) stay on
the client and never appear here.

A message that breaks the contract raises :class:`ContractError` where it is made, naming the
algorithm, the field and the two sizes: that is a bug in the algorithm, not a flaky client.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch


class ContractError(ValueError):
    """A task or reply that breaks the client/server contract (an algorithm's bug)."""


def derive_seed(seed: int, round_idx: int, client_id: int) -> int:
    """A well-mixed 63-bit seed for one client in one round (numpy ``SeedSequence``)."""
    state = np.random.SeedSequence([int(seed), int(round_idx), int(client_id)]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def tensor_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    """Exact payload size in bytes of the tensors given (``None`` entries cost nothing)."""
    return int(sum(t.numel() * t.element_size() for t in tensors if t is not None))


def _require(ok: bool, algorithm: str, message: str) -> None:
    if not ok:
        raise ContractError(f"{algorithm}: {message}")


@dataclass(frozen=True)
class ClientTask:
    """What the server sends one sampled client in one round.

    Attributes:
        round: Round index, starting at 0.
        client_id: The client's id (>= 0).
        seed: Seed derived from (run seed, round, client id) by :func:`derive_seed`.
        global_state: M flattened parameter vectors, each (P_m,) (M = K components for the
            mixture methods, 1 for FedAvg, 0 for Local).
        settings: Scalar settings for this round (e.g. ``{"phase": "warmup"}``).
        payload_bytes: Bytes the encoded state took on the wire when a downlink codec sent it
            (``None``: sent as it is, float32).
        algorithm: Name of the strategy that made the task (for error messages).
        upload_sizes: Sizes (P_m,) of the updates the server expects back, one per update;
            ``None`` means one per global vector, of its size. FedSoft sends K centres and
            expects one model back.

    Raises:
        ContractError: a negative round or client id, a global vector that is not 1-D, or a
            negative upload size.
    """

    round: int
    client_id: int
    seed: int
    global_state: tuple[torch.Tensor, ...]
    settings: Mapping[str, float | int | str] = field(default_factory=dict)
    payload_bytes: int | None = None
    algorithm: str = "strategy"
    upload_sizes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        name = self.algorithm
        _require(self.round >= 0 and self.client_id >= 0, name,
                 f"ClientTask.round = {self.round} and client_id = {self.client_id} must be >= 0")
        for m, theta in enumerate(self.global_state):
            _require(theta.dim() == 1, name, f"ClientTask.global_state[{m}] has shape "
                     f"{tuple(theta.shape)}; every global vector must be flat (P,)")
        if self.upload_sizes is not None:
            _require(all(int(s) >= 0 for s in self.upload_sizes), name,
                     f"ClientTask.upload_sizes = {self.upload_sizes} must be >= 0")

    @property
    def expected_sizes(self) -> tuple[int, ...]:
        """Sizes of the updates the reply must carry (see ``upload_sizes``)."""
        if self.upload_sizes is not None:
            return tuple(int(s) for s in self.upload_sizes)
        return tuple(int(t.numel()) for t in self.global_state)

    @property
    def bytes_down(self) -> int:
        """Downlink payload of this task in bytes (what crossed the wire)."""
        return tensor_bytes(self.global_state) if self.payload_bytes is None else int(self.payload_bytes)

    def reply(self, num_examples: int, updates: Sequence[torch.Tensor | None],
              aggregation_weights: Sequence[float] | torch.Tensor,
              metrics: Mapping[str, float] | None = None,
              statistics: Mapping[str, torch.Tensor] | None = None) -> ClientReply:
        """The client's :class:`ClientReply` to this task (checked against its expected sizes).

        Args:
            num_examples: n_c, the client's training examples.
            updates: One (P_m,) delta (new minus received) per expected size, or ``None`` for
                an update not sent.
            aggregation_weights: (M,) weight of each update in the server's average.
            metrics: Scalar client metrics (nats).
            statistics: Small tensors the server's rule needs (counted as uplink bytes).
        """
        weights = torch.as_tensor(aggregation_weights, dtype=torch.float32).detach().cpu()
        return ClientReply(self.client_id, int(num_examples), weights, tuple(updates), dict(metrics or {}),
                           expected_sizes=self.expected_sizes, statistics=dict(statistics or {}),
                           algorithm=self.algorithm)


@dataclass(frozen=True)
class ClientReply:
    """What one client uploads after its local update.

    Attributes:
        client_id: The client's id.
        num_examples: Number of local training examples n_c (>= 0).
        aggregation_weights: (M,) float32, the weight of each update in the server's average
            (FedGMI step 4: w_ck = sum_i r_ik; FedAvg: n_c).
        updates: M entries, each a (P_m,) parameter delta (new minus received) or ``None``
            when it was not trained or not sent.
        metrics: Scalar client metrics (e.g. mean negative ELBO in nats).
        expected_sizes: (P_m,) the sizes the task asked for (``None``: not checked, for
            hand-made replies in tests and tools).
        statistics: Small named tensors the server's rule needs besides the updates (FedSoft's
            importances u_c, (K,)); counted in :attr:`bytes_up`.
        payload_bytes: Bytes the encoded updates took on the wire when an uplink codec sent
            them (``None``: sent as they are).
        algorithm: Name of the strategy that made the reply (for error messages).

    Raises:
        ContractError: as many updates as aggregation weights (and expected sizes) is broken, an
            update has another size than the global vector it belongs to, or an aggregation
            weight is negative or not finite.
    """

    client_id: int
    num_examples: int
    aggregation_weights: torch.Tensor
    updates: tuple[torch.Tensor | None, ...]
    metrics: Mapping[str, float] = field(default_factory=dict)
    expected_sizes: tuple[int, ...] | None = None
    statistics: Mapping[str, torch.Tensor] = field(default_factory=dict)
    payload_bytes: int | None = None
    algorithm: str = "strategy"

    def __post_init__(self) -> None:
        name, weights = self.algorithm, self.aggregation_weights
        _require(self.num_examples >= 0, name, f"ClientReply.num_examples = {self.num_examples} must be >= 0")
        _require(weights.dim() == 1 and len(weights) == len(self.updates), name,
                 f"ClientReply.updates has {len(self.updates)} entries but aggregation_weights has "
                 f"shape {tuple(weights.shape)}; give one aggregation weight per update")
        _require(bool(torch.isfinite(weights).all()) and bool((weights >= 0).all()), name,
                 f"ClientReply.aggregation_weights = {weights.tolist()} must be finite and >= 0")
        if self.expected_sizes is not None:
            _require(len(self.expected_sizes) == len(self.updates), name,
                     f"ClientReply.updates has {len(self.updates)} entries but the task expects "
                     f"{len(self.expected_sizes)} (ClientTask.expected_sizes)")
            for m, (u, size) in enumerate(zip(self.updates, self.expected_sizes)):
                _require(u is None or (u.dim() == 1 and u.numel() == size), name,
                         f"ClientReply.updates[{m}] has shape {tuple(u.shape) if u is not None else None} "
                         f"but its global vector has {size} entries")
        for key, value in self.statistics.items():
            _require(isinstance(value, torch.Tensor), name, f"ClientReply.statistics[{key!r}] must be a tensor")

    @property
    def bytes_up(self) -> int:
        """Uplink payload in bytes (what crossed the wire): the updates sent, the M aggregation
        weights and the statistics."""
        updates = tensor_bytes(self.updates) if self.payload_bytes is None else int(self.payload_bytes)
        return updates + tensor_bytes([self.aggregation_weights, *self.statistics.values()])


def reply_to(reply: ClientReply, device: torch.device | str) -> ClientReply:
    """The same reply with its tensors on ``device`` (e.g. the CPU before a gather across ranks)."""
    updates = tuple(None if u is None else u.to(device) for u in reply.updates)
    statistics = {k: v.to(device) for k, v in reply.statistics.items()}
    return replace(reply, updates=updates, aggregation_weights=reply.aggregation_weights.to(device),
                   statistics=statistics)
