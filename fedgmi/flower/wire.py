"""fedgmi's messages as Flower records, and both byte counts.

One Flower message per node and round carries the tasks of every sampled client that node
holds (one process start per node and round under Flower's subprocess isolation); the records
of client c are named ``"<c>.<record>"``.

Down, per :class:`~fedgmi.federated.messages.ClientTask`:

- ``"global"``: ArrayRecord, the task's M global vectors (keys ``"0" .. "M-1"``, (P_m,) float32);
- ``"task"``: ConfigRecord, round, client id, seed, algorithm, expected upload sizes and the
  task's scalar settings (``"setting.<name>"``);
- ``"client-state"`` (only when the node may not hold it: first contact, after a resume or a
  node restart): ArrayRecord, the server's copy of the client's state (e.g. its (K,) pi);
- ``"strategy"`` (once per node, and again only when it changed): ArrayRecord holding one
  uint8 array, :meth:`~fedgmi.federated.strategy.Strategy.node_state` of the node's own
  clients (``torch.save`` bytes, read back with ``weights_only=True``), e.g. the global part
  of FedGMI's topic model (centroids, beta) that the warm-up rounds use on the client. It
  holds nothing of another node's clients (no proportions table, no server-side records of
  other clients); strategies whose clients need nothing beyond their task send no such record.

Up, per :class:`~fedgmi.federated.messages.ClientReply`:

- ``"updates"``: ArrayRecord, the updates sent (keys ``"m"``; a ``None`` update is absent);
- ``"weights"``: ArrayRecord, ``"aggregation_weights"`` (M,) and ``"statistic.<name>"``;
- ``"reply"``: ConfigRecord, client id, number of examples, the client's scalar metrics
  (``"metric.<name>"``) and ``"status"`` (``"ok"``, or ``"diverged"``/``"failed"`` with
  ``"error"``, one line) and ``"state-in"``, the digest (:func:`state_digest`) of the state
  the update started from, which the server checks against its copy;
- ``"client-state"``: ArrayRecord, the client's new state, a copy for the server's
  checkpoints and evaluation (the client keeps its own in its Flower context).

Byte counts. fedgmi's (:attr:`ClientTask.bytes_down`, :attr:`ClientReply.bytes_up`) count the
tensor payloads the algorithm exchanges; :func:`message_bytes` counts what Flower serialises for a
message (every object of its tree: the records, the arrays with their ``.npy`` headers, the
metadata), each distinct object once (so a node holding several clients receives the global
vectors they share once), and :func:`payload_bytes` the raw tensor bytes of some records. With
the default (lossless, float32) channel and one client per node, the tensors of ``"global"``,
``"updates"`` and ``"weights"`` are exactly fedgmi's bytes; the client-state and strategy
records are extra and reported apart.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from fedgmi.federated.messages import ClientReply, ClientTask

GLOBAL, TASK, CLIENT_STATE, STRATEGY = "global", "task", "client-state", "strategy"
UPDATES, WEIGHTS, REPLY = "updates", "weights", "reply"
STEP, SHARED, REQUEST, STEP_REPLY = "step", "shared", "request", "step-reply"


def add_step(content: RecordDict, step: str, requests: Mapping[int, Mapping[str, torch.Tensor]],
             shared: Mapping[str, torch.Tensor], global_state: tuple[torch.Tensor, ...] | None) -> None:
    """A client step's records (:mod:`fedgmi.federated.clients`): ``"step"`` (ConfigRecord: the
    step's name and the client ids), ``"shared"`` (ArrayRecord, once per node), ``"<c>.request"``
    per client and, for the evaluation's steps, ``"global"`` (the global vectors, once)."""
    content[STEP] = ConfigRecord({"step": step, "client-ids": sorted(int(c) for c in requests)})
    content[SHARED] = array_record(shared)
    for cid, request in requests.items():
        content[f"{cid}.{REQUEST}"] = array_record(request)
    if global_state is not None:
        content[GLOBAL] = array_record({str(m): t for m, t in enumerate(global_state)})


def step_from(content: RecordDict, device: torch.device | str = "cpu") -> tuple[str, list[int], dict[str, torch.Tensor],
                                                                               tuple[torch.Tensor, ...] | None]:
    """(step, client ids, shared payload, global vectors or ``None``) of a step message."""
    config = content.config_records[STEP]
    vectors = tensors(content.array_records[GLOBAL], device) if GLOBAL in content.array_records else None
    state = None if vectors is None else tuple(vectors[str(m)] for m in range(len(vectors)))
    return (str(config["step"]), [int(c) for c in config["client-ids"]], tensors(content.array_records[SHARED], device),
            state)


def step_request(content: RecordDict, client_id: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Client ``client_id``'s own request in a step message."""
    return tensors(content.array_records[f"{client_id}.{REQUEST}"], device)


def add_step_reply(content: RecordDict, client_id: int, reply: Mapping[str, torch.Tensor]) -> None:
    """Client ``client_id``'s step reply (ArrayRecord ``"<c>.step-reply"``)."""
    content[f"{client_id}.{STEP_REPLY}"] = array_record(reply)


def step_reply(content: RecordDict, client_id: int) -> dict[str, torch.Tensor]:
    """Client ``client_id``'s step reply (raises RuntimeError with the node's one-line error when
    the client's step failed there)."""
    key = f"{client_id}.{STEP_REPLY}"
    if key not in content.array_records:
        status, error, _ = reply_status(content, client_id)
        raise RuntimeError(f"client {client_id}: {error or status}")
    return tensors(content.array_records[key])


def array_record(tensors: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """An ArrayRecord of CPU tensors (numpy serialisation, exact for every dtype)."""
    return ArrayRecord({k: Array(t.detach().cpu().contiguous().numpy()) for k, t in tensors.items()})


def tensors(record: ArrayRecord, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The record's arrays as tensors on ``device`` (copies, writable)."""
    return {k: torch.from_numpy(np.array(a.numpy(), copy=True)).to(device) for k, a in record.items()}


def add_task(content: RecordDict, task: ClientTask, client_state: Mapping[str, torch.Tensor] | None = None) -> None:
    """Add one task's records to a node's message ``content`` (see the module docstring)."""
    config: dict[str, Any] = {"round": task.round, "client-id": task.client_id, "seed": task.seed,
                              "algorithm": task.algorithm,
                              "payload-bytes": -1 if task.payload_bytes is None else int(task.payload_bytes)}
    if task.upload_sizes is not None:
        config["upload-sizes"] = [int(s) for s in task.upload_sizes]
    for name, value in task.settings.items():
        config[f"setting.{name}"] = value
    c = task.client_id
    content[f"{c}.{GLOBAL}"] = array_record({str(m): t for m, t in enumerate(task.global_state)})
    content[f"{c}.{TASK}"] = ConfigRecord(config)
    if client_state is not None:
        content[f"{c}.{CLIENT_STATE}"] = array_record(client_state)


def add_strategy(content: RecordDict, blob: bytes) -> None:
    """Add the strategy-state bytes (:func:`strategy_blob`) to a node's message."""
    content[STRATEGY] = ArrayRecord({"blob": Array(np.frombuffer(blob, dtype=np.uint8).copy())})


def task_ids(content: RecordDict) -> list[int]:
    """The client ids of the tasks in a node's message, sorted."""
    return sorted(int(k.split(".")[0]) for k in content.config_records if k.endswith(f".{TASK}"))


def task_from(content: RecordDict, client_id: int, device: torch.device | str = "cpu") -> ClientTask:
    """Client ``client_id``'s :class:`ClientTask` in a node's message (checks itself)."""
    config = content.config_records[f"{client_id}.{TASK}"]
    vectors = tensors(content.array_records[f"{client_id}.{GLOBAL}"], device)
    settings = {k[len("setting."):]: v for k, v in config.items() if k.startswith("setting.")}
    sizes = config.get("upload-sizes")
    payload = int(config["payload-bytes"])
    return ClientTask(int(config["round"]), int(config["client-id"]), int(config["seed"]),
                      tuple(vectors[str(m)] for m in range(len(vectors))), settings,
                      payload_bytes=None if payload < 0 else payload, algorithm=str(config["algorithm"]),
                      upload_sizes=None if sizes is None else tuple(int(s) for s in sizes))


def received_state(content: RecordDict, client_id: int,
                   device: torch.device | str = "cpu") -> dict[str, torch.Tensor] | None:
    """The state of client ``client_id`` the server sent with its task, or ``None``."""
    key = f"{client_id}.{CLIENT_STATE}"
    return tensors(content.array_records[key], device) if key in content.array_records else None


def state_digest(state: Mapping[str, torch.Tensor] | None) -> str:
    """16 hex digits identifying a client state's names, shapes, dtypes and values."""
    digest = hashlib.sha256()
    for name in sorted(state or {}):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()[:16]


def received_strategy(content: RecordDict) -> bytes | None:
    """The strategy-state bytes the server sent with a task, or ``None``."""
    if STRATEGY not in content.array_records:
        return None
    return content.array_records[STRATEGY]["blob"].numpy().tobytes()


def add_reply(content: RecordDict, reply: ClientReply, client_state: Mapping[str, torch.Tensor],
              state_in: str) -> None:
    """Add one reply's records to a node's reply ``content`` (see the module docstring);
    ``state_in`` is the :func:`state_digest` of the state the update started from."""
    config: dict[str, Any] = {"client-id": reply.client_id, "num-examples": reply.num_examples,
                              "num-updates": len(reply.updates), "status": "ok", "state-in": state_in}
    for name, value in reply.metrics.items():
        config[f"metric.{name}"] = float(value)
    weights = {"aggregation_weights": reply.aggregation_weights,
               **{f"statistic.{k}": v for k, v in reply.statistics.items()}}
    c = reply.client_id
    content[f"{c}.{UPDATES}"] = array_record({str(m): u for m, u in enumerate(reply.updates) if u is not None})
    content[f"{c}.{WEIGHTS}"] = array_record(weights)
    content[f"{c}.{REPLY}"] = ConfigRecord(config)
    content[f"{c}.{CLIENT_STATE}"] = array_record(client_state)


def add_failure(content: RecordDict, client_id: int, status: str, error: str) -> None:
    """Add a record saying client ``client_id``'s update failed (``status`` "failed") or its loss
    became NaN/Inf (``status`` "diverged"); ``error`` is one line."""
    content[f"{client_id}.{REPLY}"] = ConfigRecord({"client-id": int(client_id), "status": status,
                                                    "error": " ".join(str(error).split())[:500]})


def reply_status(content: RecordDict, client_id: int) -> tuple[str, str, str]:
    """(status, error line, digest of the state the update started from) of client
    ``client_id``'s reply; status "missing" when the node's reply does not hold it."""
    config = content.config_records.get(f"{client_id}.{REPLY}")
    if config is None:
        return "missing", "the node's reply holds no record for this client", ""
    return str(config["status"]), str(config.get("error", "")), str(config.get("state-in", ""))


def reply_from(content: RecordDict, task: ClientTask,
               device: torch.device | str = "cpu") -> tuple[ClientReply, dict[str, torch.Tensor]]:
    """The :class:`ClientReply` (checked against ``task``'s expected sizes) and the client's new
    state from a node's reply."""
    c = task.client_id
    config = content.config_records[f"{c}.{REPLY}"]
    updates = tensors(content.array_records[f"{c}.{UPDATES}"], device)
    weights = tensors(content.array_records[f"{c}.{WEIGHTS}"], device)
    statistics = {k[len("statistic."):]: v for k, v in weights.items() if k.startswith("statistic.")}
    metrics = {k[len("metric."):]: float(v) for k, v in config.items() if k.startswith("metric.")}
    reply = task.reply(int(config["num-examples"]),
                       [updates.get(str(m)) for m in range(int(config["num-updates"]))],
                       weights["aggregation_weights"], metrics, statistics)
    return reply, tensors(content.array_records[f"{c}.{CLIENT_STATE}"], device)


def strategy_blob(extra: Mapping[str, Any]) -> bytes:
    """``torch.save`` bytes of a strategy's extra state (tensors and plain containers)."""
    buffer = io.BytesIO()
    torch.save(dict(extra), buffer)
    return buffer.getvalue()


def load_strategy_blob(blob: bytes) -> dict[str, Any]:
    """What :func:`strategy_blob` wrote, read with ``weights_only=True`` onto the CPU."""
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


def message_bytes(message: Message) -> int:
    """Bytes Flower serialises for ``message``: every object of its tree (message, metadata,
    record dict, records, arrays and their chunks), each once."""
    return int(sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values()))


def payload_bytes(content: RecordDict, names: tuple[str, ...]) -> int:
    """Raw tensor bytes (no ``.npy`` header) of the array records of ``content`` named ``names``
    or ``"<client>.<name>"``."""
    total = 0
    for key, record in content.array_records.items():
        if key in names or key.split(".", 1)[-1] in names:
            total += sum(a.numpy().nbytes for a in record.values())
    return int(total)
