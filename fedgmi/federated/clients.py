"""Client steps: every computation on a client's data outside the training rounds (a strategy's
initialisation stage, evaluation) is a request the server sends and a reply the client computes
from its own data, by the same code in process and on Flower.

The server reaches its clients through a :class:`ClientPool`: ``pool.call(step, requests,
shared)`` sends each addressed client its own request (a :data:`Payload`) plus the ``shared``
payload every addressed client receives, and returns the replies by client id. On the client,
:func:`run_client_step` runs the step on that client's :class:`NodeClient` (its data and, where
its holder has it, the ground truth of its own samples). What a step may compute:

- ``"evaluate"`` and ``"evaluate.matched"``: the two halves of the evaluation
  (:mod:`fedgmi.federated.evaluation`);
- any other name: the strategy's own :meth:`~fedgmi.federated.strategy.Strategy.client_step`
  (e.g. FedGMI's topic-model stages, :mod:`fedgmi.algorithms.topic_init`).

:class:`InProcessClients` runs the steps here, in client-id order (the simulation: a scenario's
clients); :class:`fedgmi.flower.server_app.FlowerRounds` sends them to the Flower nodes that
hold the clients. Either way the pool counts the payload bytes of every request and reply
(``bytes_down``, ``bytes_up``: the tensors' raw bytes, as :attr:`ClientTask.bytes_down`) and the
exchanges (one per :meth:`ClientPool.call`).

A client also keeps a small *scratch* between the steps of one stage (e.g. its test outputs
between the two halves of the evaluation): it never leaves the client.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from fedgmi.data.scenario import ClientData, Scenario
    from fedgmi.federated.strategy import Strategy

#: What a request or a reply carries: named tensors (a scalar as a 0-dim tensor).
Payload = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ClientTruth:
    """The ground truth of one client's own samples, for evaluation only (a simulated client
    has it from its scenario; a deployed one only where its holder labelled the inherent
    distribution of its samples).

    Attributes:
        z_train: (n_train,) int64 true component of each training sample.
        z_test: (n_test,) int64 true component of each test sample.
        proportions: (K_true,) float64 the realised fractions of the training part.
        num_components: K_true.
    """

    z_train: torch.Tensor
    z_test: torch.Tensor
    proportions: torch.Tensor
    num_components: int


@dataclass(frozen=True)
class NodeClient:
    """One client as the node holding it sees it: its data and, optionally, its ground truth."""

    data: ClientData
    truth: ClientTruth | None = None

    @property
    def client_id(self) -> int:
        return int(self.data.client_id)


def payload_bytes(payload: Mapping[str, torch.Tensor] | None) -> int:
    """Raw tensor bytes of a payload (no names, no headers)."""
    return int(sum(t.numel() * t.element_size() for t in (payload or {}).values()))


def scalar(payload: Mapping[str, torch.Tensor], name: str) -> float:
    """A 0-dim entry of a payload as a Python number."""
    return payload[name].item()


def scenario_clients(scenario: Scenario) -> list[NodeClient]:
    """The clients of a simulated scenario, each with its own ground truth."""
    truth = scenario.truth
    k = int(truth.proportions.shape[1])
    return [NodeClient(c, ClientTruth(truth.z_train[i], truth.z_test[i], truth.proportions[i], k))
            for i, c in enumerate(scenario.clients)]


class ClientPool(ABC):
    """The clients as the server reaches them (see the module docstring).

    Attributes:
        bytes_up: Payload bytes of every reply so far.
        bytes_down: Payload bytes of every request so far (the shared part once per client).
        exchanges: Calls so far.
    """

    def __init__(self) -> None:
        self.bytes_up = self.bytes_down = self.exchanges = 0

    @property
    @abstractmethod
    def client_ids(self) -> list[int]:
        """Ids of every client the pool reaches, sorted."""

    def only(self, ids: Sequence[int]) -> PoolView:
        """The clients ``ids`` of this pool, with counters of their own."""
        return PoolView(self, ids)

    def call(self, step: str, requests: Mapping[int, Payload], shared: Payload | None = None,
             partial: bool = False) -> dict[int, Payload]:
        """Run ``step`` on the clients of ``requests`` (each with its request and ``shared``).

        Args:
            partial: Return the replies of the clients that could be reached and leave out those
                whose node is gone or did not reply in time (a deployment; a pool in this
                process reaches every client). ``False``: that is an error.

        Returns:
            Client id -> its reply, for every client of ``requests`` (``partial``: those reached).

        Raises:
            RuntimeError: a client's step failed, or (not ``partial``) a client was not reached
                (the message names the client and the step).
        """
        shared = dict(shared or {})
        replies = self._call(step, {int(c): dict(r) for c, r in requests.items()}, shared, partial)
        self.exchanges += 1
        self.bytes_down += sum(payload_bytes(shared) + payload_bytes(r) for r in requests.values())
        self.bytes_up += sum(payload_bytes(r) for r in replies.values())
        return replies

    @abstractmethod
    def _call(self, step: str, requests: dict[int, Payload], shared: Payload,
              partial: bool = False) -> dict[int, Payload]:
        """Deliver the requests and collect the replies (the transport; see :meth:`call`)."""


class PoolView(ClientPool):
    """The clients ``ids`` of ``pool`` (e.g. the training clients of an initialisation stage),
    with counters of their own."""

    def __init__(self, pool: ClientPool, ids: Sequence[int]) -> None:
        super().__init__()
        self.pool, self.ids = pool, sorted(int(c) for c in ids)
        self.scenario = getattr(pool, "scenario", None)

    @property
    def client_ids(self) -> list[int]:
        return list(self.ids)

    def _call(self, step: str, requests: dict[int, Payload], shared: Payload,
              partial: bool = False) -> dict[int, Payload]:
        stray = sorted(set(requests) - set(self.ids))
        if stray:
            raise RuntimeError(f"step {step!r}: clients {stray} are not in this pool")
        return self.pool._call(step, requests, shared, partial)


class InProcessClients(ClientPool):
    """The clients in this process (a simulation): each step runs here, in client-id order.

    Args:
        strategy: The strategy whose client side runs the steps (the server's own object).
        clients: The clients (a scenario's, with their ground truth, or plain
            :class:`~fedgmi.data.ClientData` without).
        scenario: The scenario they come from, if any (the Oracle's ground truth and the
            evaluation's pooled ``generalization`` test are simulation-only).
    """

    def __init__(self, strategy: Strategy, clients: Sequence[NodeClient], scenario: Scenario | None = None) -> None:
        super().__init__()
        self.strategy, self.scenario = strategy, scenario
        self.clients = {c.client_id: c for c in clients}
        self.scratch: dict[int, dict[str, Any]] = {}

    def data(self, client_id: int) -> ClientData:
        """Client ``client_id``'s data (the in-process round loop trains on it)."""
        return self.clients[int(client_id)].data

    @property
    def client_ids(self) -> list[int]:
        return sorted(self.clients)

    def _call(self, step: str, requests: dict[int, Payload], shared: Payload,
              partial: bool = False) -> dict[int, Payload]:
        out = {}  # every client here is reached: ``partial`` changes nothing
        for cid in sorted(requests):
            if cid not in self.clients:
                raise RuntimeError(f"step {step!r}: no client {cid} in this pool")
            scratch = self.scratch.setdefault(cid, {})
            out[cid] = run_client_step(self.strategy, step, self.clients[cid], {**shared, **requests[cid]}, scratch)
        return out


def client_pool(clients: Any, strategy: Strategy) -> ClientPool:
    """A pool for ``clients``: a :class:`ClientPool` as it is, a scenario (its clients with their
    ground truth), or a sequence of :class:`~fedgmi.data.ClientData` or :class:`NodeClient`
    (in process).

    Raises:
        TypeError: anything else.
    """
    if isinstance(clients, ClientPool):
        return clients
    if hasattr(clients, "clients") and hasattr(clients, "truth"):
        return InProcessClients(strategy, scenario_clients(clients), clients)
    if isinstance(clients, Sequence):
        return InProcessClients(strategy, [c if isinstance(c, NodeClient) else NodeClient(c) for c in clients])
    raise TypeError(f"clients must be a ClientPool, a Scenario or a sequence of ClientData, got {type(clients).__name__}")


def run_client_step(strategy: Strategy, step: str, client: NodeClient, request: Payload,
                    scratch: dict[str, Any]) -> Payload:
    """The client side of one step (see the module docstring): the evaluation's halves, or the
    strategy's :meth:`~fedgmi.federated.strategy.Strategy.client_step`."""
    from fedgmi.federated import evaluation

    if step in evaluation.CLIENT_STEPS:
        return evaluation.CLIENT_STEPS[step](strategy, client, request, scratch)
    return strategy.client_step(step, request, client.data)


__all__ = [
    "ClientPool",
    "ClientTruth",
    "InProcessClients",
    "NodeClient",
    "Payload",
    "PoolView",
    "client_pool",
    "payload_bytes",
    "run_client_step",
    "scalar",
    "scenario_clients",
]
