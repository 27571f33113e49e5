"""The Flower ``ServerApp``: fedgmi's round loop with the clients on Flower nodes.

Everything server-side is the in-process loop's own code: ``fedgmi fit``'s preparation (config
checks, scenario, strategy, Fabric loggers, run folder, resume from ``ckpt-path``),
:func:`~fedgmi.federated.server.run_federation` (initialisation stage, evaluation, progress,
checkpoints through the same callbacks as the CLI) and, in each round,
:func:`~fedgmi.federated.server.configure_tasks` (sampling, dropout, the channel's downlink) and
:func:`~fedgmi.federated.server.conclude_round` (the channel's uplink and byte counts,
screening, ``min_clients``, aggregation). Only the clients' part of a round runs elsewhere:
:class:`FlowerRounds` sends each task to the node holding its client and waits up to
``round-timeout`` seconds for the replies; a client whose node is gone, does not reply in time
or fails is left out of the round and counted in ``clients_failed``, as a failing client is in
process.

Every computation on a client's data runs on the node holding the client: the rounds' local
updates (message type ``train``), and the strategy's initialisation stage and the evaluation,
as client steps (:mod:`fedgmi.federated.clients`, message type ``query.step``): the server only
combines what the replies carry. (The ground-truth scores are computed on the nodes, from
their own clients' true components, and summed on the server.)

A node's message holds its own clients' tasks and states and the strategy's
:meth:`~fedgmi.federated.strategy.Strategy.node_state`, nothing of another node's clients
(:meth:`FlowerRounds.node_content`). A client is served by the one node that claims it: a
second node claiming it stops the run with a one-line :class:`~fedgmi.errors.ConfigError`
(:func:`assign_clients`).

At the end ``<run>/flower.json`` holds both byte counts (fedgmi's and Flower's serialised
messages) in total and per round.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import rich
from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from rich.console import Console

from fedgmi.atomic import write_atomic
from fedgmi.errors import ConfigError
from fedgmi.federated.clients import ClientPool
from fedgmi.federated.messages import ContractError
from fedgmi.federated.server import LoopState, TrainingDiverged, conclude_round, configure_tasks
from fedgmi.flower import wire
from fedgmi.flower.pulls import shorten_pull_backoff
from fedgmi.flower.runtime import RunSettings


def assign_clients(holder: Mapping[int, int], claims: Iterable[tuple[int, Iterable[int]]]) -> dict[int, int]:
    """Client id -> node id after the nodes' answers: ``holder`` (what earlier answers
    established) with each ``(node, client ids)`` claim added, in order.

    A client is served by one node: a second node claiming it (a misconfigured node, or a key
    registered by someone else, see docs/guide/flower.md) is refused, never silently chosen.

    Raises:
        ConfigError: a client claimed by two nodes (one line naming the client and both nodes).
    """
    out = dict(holder)
    for node, client_ids in claims:
        for cid in sorted(int(c) for c in client_ids):
            if out.get(cid, node) != node:
                raise ConfigError(f"client {cid} is claimed by Flower nodes {out[cid]} and {node}; a client is "
                                  "served by one node: stop one of them or fix its --node-config client-ids")
            out[cid] = node
    return out


#: Seconds between the server's polls for replies (:meth:`FlowerRounds.exchange`).
POLL_S = 0.1


class FlowerRounds(ClientPool):
    """The clients on Flower nodes: runs rounds with their updates there (a ``round_runner`` of
    :func:`~fedgmi.federated.server.run_federation`) and is their
    :class:`~fedgmi.federated.clients.ClientPool` (the initialisation stage's and the
    evaluation's client steps, message type ``query.step``).

    Args:
        grid: The ServerApp's Flower grid.
        settings: The run's :class:`~fedgmi.flower.runtime.RunSettings` (timeouts).
        log: Where progress lines go (one line each).
        strategy: The server's strategy (its global state and node state go with the steps).
    """

    def __init__(self, grid: Grid, settings: RunSettings, log: Callable[[str], None] = print,
                 strategy: Any = None) -> None:
        super().__init__()
        self.grid, self.settings, self.log, self.strategy = grid, settings, log, strategy
        self.holder: dict[int, int] = {}  # client id -> node id
        self.described: dict[int, dict[str, Any]] = {}  # node -> its answer (client ids, sizes, shapes)
        self.queried: set[int] = set()  # nodes asked which clients they hold
        self.state_sent: set[tuple[int, int]] = set()  # (node, client): the node holds that client's state
        self.strategy_sent: dict[int, str] = {}  # node -> hash of the strategy state it holds
        self.counts = {"fedgmi_bytes_down": 0, "fedgmi_bytes_up": 0, "flower_bytes_down": 0, "flower_bytes_up": 0,
                       "flower_payload_bytes_down": 0, "flower_payload_bytes_up": 0,
                       "flower_state_bytes_down": 0, "flower_state_bytes_up": 0, "flower_strategy_bytes_down": 0,
                       "flower_query_bytes": 0, "messages_down": 0, "messages_up": 0}
        self.per_round: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ nodes
    def exchange(self, messages: list[Message], timeout: float) -> list[Message]:
        """Send ``messages`` and collect their replies until all came or ``timeout`` seconds
        passed (Flower's ``Grid.send_and_receive`` polls every 3 s; here every
        :data:`POLL_S` s, which saves seconds a round on a fast network).

        Returns:
            The replies that came in time (a node that did not reply has none).
        """
        pending = set(self.grid.push_messages(messages)) - {None}  # None: a message Flower could not push
        deadline, replies = time.monotonic() + timeout, []
        while pending and time.monotonic() < deadline:
            got = list(self.grid.pull_messages(pending))
            replies += got
            pending -= {m.metadata.reply_to_message_id for m in got}
            if pending:
                time.sleep(POLL_S)
        return replies

    def _query(self, nodes: list[int], timeout: float) -> None:
        """Ask ``nodes`` which clients they hold; record the answers."""
        messages = [Message(RecordDict(), dst_node_id=n, message_type="query.clients") for n in nodes]
        for reply in self.exchange(messages, timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                self.log(f"fedgmi.flower: node {node} did not say which clients it holds: {reply.error.reason}")
                continue
            self.counts["flower_query_bytes"] += wire.message_bytes(reply)
            record = reply.content.config_records["node"]
            if record.get("error"):
                raise ConfigError(f"node {node}: {record['error']}")
            self.holder = assign_clients(self.holder, [(node, record["client-ids"])])
            self.described[node] = dict(record)
            self.queried.add(node)

    def refresh(self, timeout: float = 30.0) -> set[int]:
        """Forget nodes that left, ask new ones which clients they hold; returns the live nodes."""
        live = set(self.grid.get_node_ids())
        for cid, node in list(self.holder.items()):
            if node not in live:
                del self.holder[cid]
        self.queried &= live
        new = sorted(live - self.queried)
        if new:
            self._query(new, timeout)
        return live

    def discover(self, client_ids: list[int]) -> None:
        """Wait up to ``node-timeout`` seconds for nodes that hold every client of ``client_ids``.

        Raises:
            ConfigError: some clients are held by no node by then (names them).
        """
        deadline = time.monotonic() + self.settings.node_timeout
        while True:
            self.refresh(timeout=max(1.0, min(30.0, deadline - time.monotonic())))
            missing = sorted(set(client_ids) - set(self.holder))
            if not missing:
                nodes = sorted(set(self.holder.values()))
                self.log(f"fedgmi.flower: {len(nodes)} nodes hold the {len(client_ids)} training clients")
                return
            if time.monotonic() > deadline:
                raise ConfigError(f"no Flower node holds clients {missing} after node-timeout = "
                                  f"{self.settings.node_timeout} s; start SuperNodes with --node-config "
                                  "\"client-ids='...'\"")
            time.sleep(0.5)

    def federation_info(self, num_clients: int, num_components: int):
        """The federation's sizes and shapes from the nodes' answers
        (:class:`~fedgmi.run.FederationInfo`; the true proportions unknown: NaN).

        Raises:
            ConfigError: the nodes' inputs or classes disagree (one line).
        """
        import numpy as np

        from fedgmi.run import FederationInfo

        answers = [self.described[n] for n in sorted(set(self.holder.values()))]
        shapes = {tuple(int(s) for s in a["image-shape"]) for a in answers}
        classes = {int(a["num-classes"]) for a in answers}
        if len(shapes) != 1 or len(classes) != 1:
            raise ConfigError(f"the nodes' data disagree: input shapes {sorted(shapes)}, classes {sorted(classes)}; "
                              "every node must hold inputs of one shape and one label set")
        sizes = {int(c): int(n) for a in answers for c, n in zip(a["client-ids"], a["train-sizes"])}
        names = {tuple(a.get("component-names") or ()) for a in answers}
        named = next(iter(names)) if len(names) == 1 and all(a.get("has-truth") for a in answers) else ()
        names_list = list(named) or [f"component{t}" for t in range(num_components)]
        return FederationInfo(num_clients, next(iter(shapes)), next(iter(classes)), num_components, sizes, names_list,
                              np.full((num_clients, len(names_list)), np.nan))

    # ------------------------------------------------------------------ rounds
    def node_content(self, strategy, node: int, node_tasks: list) -> RecordDict:
        """The records of ``node``'s train message: its clients' tasks, the server's copy of a
        client's state where the node may not hold it, and the strategy's
        :meth:`~fedgmi.federated.strategy.Strategy.node_state` for the node's own clients where
        it changed since the node last got it. Nothing of another node's clients."""
        content = RecordDict()
        for task in node_tasks:
            known = (node, task.client_id) in self.state_sent
            wire.add_task(content, task, None if known else strategy.client_state.get(task.client_id, {}))
        self._add_node_state(content, strategy, node)
        return content

    def _add_node_state(self, content: RecordDict, strategy, node: int) -> None:
        """The strategy's node state for ``node``'s own clients, where it changed since the node
        last got it."""
        own = sorted(cid for cid, held_by in self.holder.items() if held_by == node)
        extra = strategy.node_state(own)
        if extra:
            blob = wire.strategy_blob(extra)
            digest = hashlib.sha256(blob).hexdigest()
            if self.strategy_sent.get(node) != digest:
                wire.add_strategy(content, blob)
                self.strategy_sent[node] = digest  # forgotten again if the node never replies

    # ------------------------------------------------------------------ client steps
    @property
    def client_ids(self) -> list[int]:
        return sorted(self.holder)

    def _call(self, step: str, requests: dict[int, dict], shared: dict, partial: bool = False) -> dict[int, dict]:
        """One ``query.step`` message per node holding some of the clients (their requests, the
        shared payload, the node state, the server's copy of a client's state where the node may
        not hold it and, for the evaluation, the global vectors); waits up to round-timeout.
        With ``partial``, the clients of a node that is gone, did not reply in time or answered
        with Flower's error are left out (one progress line each) instead.

        Raises:
            RuntimeError: a client is held by no node, a node did not reply, or a client's step
                failed on its node (one line naming them; ``partial``: only the last).
        """
        strategy = self.strategy
        self.refresh()
        by_node: dict[int, list[int]] = {}
        for cid in sorted(requests):
            if cid not in self.holder:
                if partial:
                    self.log(f"fedgmi.flower: step {step!r}: client {cid} is held by no connected node; left out")
                    continue
                raise RuntimeError(f"step {step!r}: client {cid} is held by no connected node")
            by_node.setdefault(self.holder[cid], []).append(cid)
        messages = {}
        for node, cids in by_node.items():
            content = RecordDict()
            wire.add_step(content, step, {c: requests[c] for c in cids}, shared,
                          strategy.global_state if step.startswith("evaluate") else None)
            for cid in cids:
                if (node, cid) not in self.state_sent:
                    content[f"{cid}.{wire.CLIENT_STATE}"] = wire.array_record(strategy.client_state.get(cid, {}))
            self._add_node_state(content, strategy, node)
            messages[node] = Message(content, dst_node_id=node, message_type="query.step")
            self.counts["flower_bytes_down"] += wire.message_bytes(messages[node])
        replies = self.exchange(list(messages.values()), self.settings.round_timeout)
        node_of = {m.metadata.message_id: node for node, m in messages.items()}
        answered = {node_of[r.metadata.reply_to_message_id]: r for r in replies}
        out = {}
        for node, cids in by_node.items():
            reply = answered.get(node)
            if reply is None or reply.has_error():
                self.strategy_sent.pop(node, None)
                why = "no reply within round-timeout" if reply is None else reply.error.reason
                line = f"step {step!r}: node {node} (clients {cids}): {' '.join(str(why).split())[:300]}"
                if not partial:
                    raise RuntimeError(line)
                self.log(f"fedgmi.flower: {line}; left out")
                for cid in cids:
                    self.state_sent.discard((node, cid))
                continue
            self.counts["flower_bytes_up"] += wire.message_bytes(reply)
            for cid in cids:
                out[cid] = {k: v.to(strategy.fabric.device) for k, v in wire.step_reply(reply.content, cid).items()}
        self.counts["messages_down"] += len(messages)
        self.counts["messages_up"] += len(replies)
        return out

    def __call__(self, strategy, scenario, federation, seed: int, rnd: int, train_ids: list[int],
                 state: LoopState, warn: Callable[[str], None], channel) -> dict[str, float]:
        """One round: the server's steps in process, the clients' on their nodes (same arguments
        and result as :func:`~fedgmi.federated.server.run_round`).

        Raises:
            TrainingDiverged: a client reported a NaN/Inf loss.
            ContractError: a client's update broke the contract (an algorithm's bug).
            RuntimeError: every client that replied reported a failure.
        """
        tasks, dropped = configure_tasks(strategy, federation, seed, rnd, train_ids, channel)
        self.refresh()
        counts = dict.fromkeys(("flower_bytes_down", "flower_bytes_up", "flower_state_bytes_down",
                                "flower_strategy_bytes_down"), 0)
        by_node: dict[int, list] = {}
        failed = 0
        for task in tasks:
            node = self.holder.get(task.client_id)
            if node is None:
                warn(f"round {rnd}: client {task.client_id} is held by no connected node; left out")
                failed += 1
                continue
            by_node.setdefault(node, []).append(task)
        messages: dict[int, Message] = {}
        for node, node_tasks in by_node.items():
            content = self.node_content(strategy, node, node_tasks)
            messages[node] = Message(content, dst_node_id=node, message_type="train", group_id=str(rnd))
            counts["flower_bytes_down"] += wire.message_bytes(messages[node])
            counts["flower_state_bytes_down"] += wire.payload_bytes(content, (wire.CLIENT_STATE,))
            counts["flower_strategy_bytes_down"] += wire.payload_bytes(content, (wire.STRATEGY,))
            self.counts["flower_payload_bytes_down"] += wire.payload_bytes(content, (wire.GLOBAL,))
        replies = self.exchange(list(messages.values()), self.settings.round_timeout)
        node_of = {m.metadata.message_id: node for node, m in messages.items()}
        answered: dict[int, Message] = {node_of[r.metadata.reply_to_message_id]: r for r in replies}
        received, errors, diverged = [], [], None
        for node, node_tasks in by_node.items():
            reply = answered.get(node)
            if reply is None:
                for task in node_tasks:
                    warn(f"round {rnd}: client {task.client_id} on node {node} did not reply within "
                         f"round-timeout = {self.settings.round_timeout:g} s; left out")
                    self.state_sent.discard((node, task.client_id))
                self.strategy_sent.pop(node, None)
                failed += len(node_tasks)
                continue
            counts["flower_bytes_up"] += wire.message_bytes(reply)
            if reply.has_error():
                if "ContractError" in reply.error.reason:
                    raise ContractError(f"round {rnd}, node {node}: {reply.error.reason}")
                for task in node_tasks:
                    errors.append(f"client {task.client_id} (node {node}): {reply.error.reason}")
                    warn(f"round {rnd}: client {task.client_id} failed on node {node} ({reply.error.reason}); "
                         "left out")
                self.strategy_sent.pop(node, None)
                continue
            self.counts["flower_payload_bytes_up"] += wire.payload_bytes(reply.content, (wire.UPDATES, wire.WEIGHTS))
            for task in node_tasks:
                cid = task.client_id
                status, error, state_in = wire.reply_status(reply.content, cid)
                if status == "diverged":
                    diverged = diverged or f"round {rnd}, client {cid}: {error}"
                    continue
                if status != "ok":
                    errors.append(f"client {cid} (node {node}): {error}")
                    warn(f"round {rnd}: client {cid} failed on node {node} ({error}); left out")
                    continue
                if state_in != wire.state_digest(strategy.client_state.get(cid, {})):
                    warn(f"round {rnd}: client {cid} on node {node} started from another state than the "
                         "server's copy (a node restarted or lost its context?)")
                client_reply, new_state = wire.reply_from(reply.content, task, strategy.fabric.device)
                self.counts["flower_state_bytes_up"] += int(sum(t.numel() * t.element_size()
                                                               for t in new_state.values()))
                strategy.client_state[cid] = new_state
                self.state_sent.add((node, cid))
                received.append(client_reply)
        failed += len(errors)
        if diverged:
            raise TrainingDiverged(diverged)
        if by_node and errors and not received:
            raise RuntimeError(f"round {rnd}: every client that replied failed; first: {errors[0]}")
        received.sort(key=lambda r: r.client_id)
        metrics = conclude_round(strategy, federation, rnd, tasks, received, failed, dropped, state, warn, channel)
        for key in counts:
            self.counts[key] += counts[key]
        self.counts["messages_down"] += len(messages)
        self.counts["messages_up"] += len(replies)
        self.counts["fedgmi_bytes_down"] += int(metrics["bytes_down_round"])
        self.counts["fedgmi_bytes_up"] += int(metrics["bytes_up_round"])
        self.per_round.append({"round": rnd, "clients": len(tasks), "replies": len(received),
                               "fedgmi_bytes_down": int(metrics["bytes_down_round"]),
                               "fedgmi_bytes_up": int(metrics["bytes_up_round"]), **counts})
        self.log(f"fedgmi.flower: round {rnd}: {len(received)}/{len(tasks)} replies; bytes down fedgmi "
                 f"{metrics['bytes_down_round']} / Flower {counts['flower_bytes_down']}, up fedgmi "
                 f"{metrics['bytes_up_round']} / Flower {counts['flower_bytes_up']}")
        return metrics

    def report(self) -> dict[str, Any]:
        """Both byte counts over the rounds (see :mod:`fedgmi.flower.wire`), and per round."""
        return {**self.counts, "rounds": self.per_round}


def fit_on_grid(grid: Grid, settings: RunSettings, console: Console | None = None) -> dict:
    """``fedgmi fit`` with the clients on the grid's nodes: the same preparation, loop,
    checkpoints, evaluation and outputs as :func:`fedgmi.run.run_fit`; returns the final metrics
    (as metrics.json).

    Raises:
        ConfigError: a bad config value, or nodes missing for some clients (one line).
        TrainingDiverged: a client's loss became NaN/Inf (outputs written so far are kept).
    """
    from fedgmi.federated.server import run_federation
    from fedgmi.run import finish, loop_callbacks, parse, prepare, start_state
    from fedgmi.run_config import instantiate

    if not Console().is_terminal:  # a log (Flower's log stream, a file): one line per message, unwrapped
        rich.reconfigure(soft_wrap=True)
    console = console or Console(soft_wrap=True)
    parser, cfg = parse(settings.fit_args(server=True))
    objs, _, checkpoint = instantiate(parser, cfg, data=False)  # the server reads no client's data
    rounds = FlowerRounds(grid, settings, lambda line: console.print(line, highlight=False))
    num_clients = int(objs.scenario.num_clients)
    rounds.discover(list(range(num_clients)))  # the evaluation reaches the unseen clients too
    info = rounds.federation_info(num_clients, int(objs.scenario.num_components))
    p = prepare(parser, cfg, (objs, None, checkpoint), info)
    rounds.strategy = p.strategy
    loop = start_state(p, console)
    fed = p.objs.federation
    last, write_eval, on_round_end = loop_callbacks(p)

    def on_eval(rnd: int, row: dict, result) -> None:
        write_eval(rnd, row, result)
        console.print(f"fedgmi.flower: round {rnd}: assignment_accuracy {row['assignment_accuracy']:.4f} "
                      f"proportion_error_tv {row['proportion_error_tv']:.4f} "
                      f"client_accuracy_mean {row['client_accuracy_mean']:.4f}", highlight=False)

    try:
        row, result = run_federation(p.strategy, rounds, fed, p.objs.evaluation, cfg.fit.seed, on_eval,
                                     on_round_end, loop, progress=False, channel=p.objs.channel,
                                     round_runner=rounds)
    except TrainingDiverged as err:
        p.run.write_metrics_json({**last["row"], "status": "diverged", "error": str(err)})
        raise
    finally:
        write_atomic(p.run.path / "flower.json", json.dumps(rounds.report(), indent=1))
    if result is None:
        raise ConfigError(f"nothing to do: the checkpoint is already at federation.rounds = {fed.rounds}")
    final = finish(p, row, result, loop.elapsed_s, console)
    c = rounds.counts
    console.print(f"fedgmi.flower: bytes down fedgmi {c['fedgmi_bytes_down']} / Flower messages "
                  f"{c['flower_bytes_down']}; up fedgmi {c['fedgmi_bytes_up']} / Flower messages "
                  f"{c['flower_bytes_up']} (details: {p.run.path / 'flower.json'})", highlight=False)
    return final


def make_server_app(run_config: dict[str, Any] | None = None) -> ServerApp:
    """A ServerApp whose run config is ``run_config`` over the Flower run's own (for
    ``flwr.simulation.run_simulation``, which passes none)."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        shorten_pull_backoff()  # the replies' objects: retried after 0.02 s, not 1 s
        try:
            settings = RunSettings.from_run_config({**dict(context.run_config), **(run_config or {})})
            fit_on_grid(grid, settings)
        except ConfigError as err:  # one line first; Flower then fails the run (its log adds a traceback)
            print(f"fedgmi: error: {err}", flush=True)
            raise

    return server


app = make_server_app()
