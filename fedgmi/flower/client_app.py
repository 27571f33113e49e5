"""The Flower ``ClientApp``: ``strategy.client_update`` on the data a node holds.

A node builds the strategy from the run's fedgmi config (:func:`~fedgmi.flower.runtime.client_side`,
once per process) and holds either its own data file's clients (node config ``data-file``,
:mod:`fedgmi.flower.node_data`: a deployment) or the clients its node config names of a
simulated scenario it builds (``client-ids``). For each task message it runs the
same client update as the in-process loop and keeps each client's state in its Flower context
(``context.state``, record ``"fedgmi-client-<id>"``) between rounds, and there too the
strategy state the server sent (record ``"strategy"``): under Flower's subprocess isolation every
message runs in a fresh process.

Message types: ``query.clients`` (reply: ConfigRecord ``"node"`` with ``"client-ids"``),
``query.step`` (a client step, :func:`step`: the initialisation stage's and the evaluation's
computations on the node's clients) and ``train`` (the tasks of the node's sampled clients, see :mod:`fedgmi.flower.wire`; reply: each
client's reply and new state, or a failure record: ``"failed"`` when the update raised,
``"diverged"`` on a NaN/Inf loss).
"""

from __future__ import annotations

import hashlib

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedgmi.errors import ConfigError
from fedgmi.federated.clients import run_client_step
from fedgmi.federated.messages import ContractError
from fedgmi.federated.worker import NonFiniteLossError, counted_client_update
from fedgmi.flower import wire
from fedgmi.flower.runtime import ClientSide, RunSettings, client_side, data_file, floored


def _side(context: Context, run_config: dict | None = None) -> ClientSide:
    settings = RunSettings.from_run_config({**dict(context.run_config), **(run_config or {})})
    return client_side(settings.config, settings.overrides, data_file(context.node_config))


def clients(msg: Message, context: Context, run_config: dict | None = None) -> Message:
    """Reply with the client ids this node holds and their sizes and shapes
    (:meth:`~fedgmi.flower.runtime.ClientSide.describe`; a bad node config or node file: a
    one-line error)."""
    try:
        record = _side(context, run_config).describe(context.node_config)
    except ConfigError as err:
        return Message(RecordDict({"node": ConfigRecord({"client-ids": [], "error": str(err)})}), reply_to=msg)
    return Message(RecordDict({"node": ConfigRecord(record)}), reply_to=msg)


def _state_key(client_id: int) -> str:
    return f"fedgmi-client-{client_id}"


def _load_node_state(msg: Message, context: Context, side: ClientSide) -> None:
    """Install the strategy's node state the server sent (kept in the node's context: under
    subprocess isolation each message runs in a fresh process)."""
    blob = wire.received_strategy(msg.content)
    if blob is not None:
        wire.add_strategy(context.state, blob)
    elif wire.STRATEGY in context.state.array_records:
        blob = wire.received_strategy(context.state)
    if blob is not None:
        digest = hashlib.sha256(blob).hexdigest()
        if digest != side.strategy_hash:  # e.g. FedGMI's topic model, after initialisation
            side.strategy.load_node_state(wire.load_strategy_blob(blob))
            side.strategy_hash = digest


def _client_state(msg: Message, context: Context, cid: int, device) -> dict:
    """The client's state: the server's copy when it sent one (first contact, resume), else the
    node's own."""
    state = wire.received_state(msg.content, cid, device)
    if state is None and _state_key(cid) in context.state.array_records:
        state = wire.tensors(context.state.array_records[_state_key(cid)], device)
    return state or {}


def step(msg: Message, context: Context, run_config: dict | None = None) -> Message:
    """A client step (:mod:`fedgmi.federated.clients`: the initialisation stage's and the
    evaluation's computations) for the node's clients in the message, on their own data; each
    client's scratch is kept in the node's context between steps, never sent. The node's
    ``min-group`` raises the request's (:func:`~fedgmi.flower.runtime.floored`)."""
    side = _side(context, run_config)
    strategy, device = side.strategy, side.strategy.fabric.device
    _load_node_state(msg, context, side)
    name, cids, shared, global_state = wire.step_from(msg.content, device)
    shared = floored(shared, context.node_config)  # the node's own floor (node config min-group)
    if global_state is not None:
        set_global_state(strategy, global_state)
    held = side.held(context.node_config)
    out = RecordDict()
    for cid in cids:
        if cid not in held:
            wire.add_failure(out, cid, "failed", f"node config: this node holds clients {held}, not client {cid}")
            continue
        strategy.client_state[cid] = _client_state(msg, context, cid, device)
        key = f"fedgmi-scratch-{cid}"
        scratch = wire.tensors(context.state.array_records[key], device) if key in context.state.array_records else {}
        try:
            reply = run_client_step(strategy, name, side.node_client(cid), {**shared, **wire.step_request(
                msg.content, cid, device)}, scratch)
        except ContractError:
            raise
        except Exception as err:  # noqa: BLE001 - the server stops the stage with this line
            wire.add_failure(out, cid, "failed", f"{type(err).__name__}: {err}")
            continue
        if scratch:
            context.state[key] = wire.array_record(scratch)
        elif key in context.state:  # the stage is over: the context travels with every message
            del context.state[key]
        wire.add_step_reply(out, cid, reply)
    return Message(out, reply_to=msg)


def set_global_state(strategy, global_state) -> None:
    """Install the server's global vectors on the node's copy of the strategy.

    Raises:
        ContractError: the strategy derives its global state from other attributes (then its
            evaluation cannot run on a node).
    """
    from fedgmi.federated.strategy import Strategy

    if type(strategy).global_state is not Strategy.global_state:
        raise ContractError(f"{strategy.name}: its global state is derived from its own attributes, so its "
                            "evaluation cannot run on a Flower node")
    strategy.global_state = global_state


def train(msg: Message, context: Context, run_config: dict | None = None) -> Message:
    """The local updates of the node's clients in the message, in client-id order: the tasks in,
    each client's reply and new state (or a failure record) out."""
    side = _side(context, run_config)
    strategy, device = side.strategy, side.strategy.fabric.device
    _load_node_state(msg, context, side)
    held = side.held(context.node_config)
    out = RecordDict()
    for cid in wire.task_ids(msg.content):
        if cid not in held:
            wire.add_failure(out, cid, "failed", f"node config: this node holds clients {held}, not client {cid}")
            continue
        task = wire.task_from(msg.content, cid, device)
        state = _client_state(msg, context, cid, device)
        try:
            reply, new_state = counted_client_update(strategy, task, side.node_client(cid).data, state)
        except NonFiniteLossError as err:
            wire.add_failure(out, cid, "diverged", str(err))
            continue
        except ContractError:
            raise  # an algorithm's bug: Flower returns it as an error reply, the server raises it
        except Exception as err:  # noqa: BLE001 - a failing client is left out of the round by the server
            wire.add_failure(out, cid, "failed", f"{type(err).__name__}: {err}")
            continue
        context.state[_state_key(cid)] = wire.array_record(new_state)
        wire.add_reply(out, reply, new_state, wire.state_digest(state))
    return Message(out, reply_to=msg)


def make_client_app(run_config: dict | None = None) -> ClientApp:
    """A ClientApp whose run config is ``run_config`` over the Flower run's own (for
    ``flwr.simulation.run_simulation``, which passes none)."""
    client = ClientApp()

    @client.query("clients")
    def _clients(msg: Message, context: Context) -> Message:
        return clients(msg, context, run_config)

    @client.train()
    def _train(msg: Message, context: Context) -> Message:
        return train(msg, context, run_config)

    @client.query("step")
    def _step(msg: Message, context: Context) -> Message:
        return step(msg, context, run_config)

    return client


app = make_client_app()
