"""The federated round loop: sampling, local updates, aggregation, evaluation, outputs.

It is the same for every algorithm: a :class:`~fedgmi.federated.strategy.Strategy` decides
what happens inside a round. Client sampling is seeded by (seed, round), client work by
(seed, round, client id), so a run is reproducible.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedgmi.errors import ConfigError
from fedgmi.federated.channel import Channel
from fedgmi.federated.clients import ClientPool, InProcessClients, client_pool
from fedgmi.federated.distributed import any_rank, gather, my_slice
from fedgmi.federated.evaluation import EvalConfig, Evaluation, attach_truth, evaluate
from fedgmi.federated.messages import ContractError, reply_to
from fedgmi.federated.robustness import drop_clients, screen_replies
from fedgmi.federated.strategy import Strategy
from fedgmi.federated.worker import NonFiniteLossError, counted_client_update
from fedgmi.validation import check_int, check_number

MAX_ROUNDS = 1_000_000
"""The most ``federation.rounds`` a run may ask for (more is a typo, not a plan)."""


@dataclass
class FederationConfig:
    """Settings of the round loop.

    Attributes:
        rounds: Communication rounds, 1 to 1,000,000 (:data:`MAX_ROUNDS`).
        client_fraction: Fraction of clients sampled each round, in (0, 1].
        eval_every: Evaluate every this many rounds (the last round is always evaluated).
        unseen_fraction: Fraction of clients, in [0, 1), that never train (the last
            round(fraction * C) client ids; clients are random draws, so any fixed subset is a
            random one). They are evaluated as new clients: proportions inferred from their
            unlabelled training part, then personalised prediction on their test part.
        dropout_probability: Probability in [0, 1) that a sampled client drops out of a round
            (simulated failure; it neither trains nor replies).
        max_update_norm_ratio: A reply whose update of some component has an L2 norm above this
            many times the round's median for that component is rejected (> 1; ``None``: no
            norm rule). NaN/Inf replies are always rejected.
        min_clients: A round with fewer accepted replies keeps the previous global state (>= 1).
        checkpoint_every: Write a checkpoint every this many rounds (and at the last round,
            and when stopped by SIGTERM/SIGINT).
        keep_checkpoints: How many ``round-NNNN.ckpt`` files to keep (``last.ckpt`` is always
            the newest); >= 1.
    """

    rounds: int = 30
    client_fraction: float = 1.0
    eval_every: int = 5
    unseen_fraction: float = 0.0
    dropout_probability: float = 0.0
    max_update_norm_ratio: float | None = 10.0
    min_clients: int = 1
    checkpoint_every: int = 1
    keep_checkpoints: int = 2

    def __post_init__(self) -> None:
        for name in ("rounds", "eval_every", "min_clients", "checkpoint_every", "keep_checkpoints"):
            check_int(f"federation.{name}", getattr(self, name), 1, MAX_ROUNDS if name == "rounds" else None)
        check_number("federation.client_fraction", self.client_fraction, 0, 1, low_open=True)
        check_number("federation.unseen_fraction", self.unseen_fraction, 0, 1, high_open=True)
        check_number("federation.dropout_probability", self.dropout_probability, 0, 1, high_open=True)
        if self.max_update_norm_ratio is not None:  # null: no screening (there is no "inf")
            check_number("federation.max_update_norm_ratio", self.max_update_norm_ratio, 1, low_open=True)

    def clients_per_round(self, num_clients: int) -> int:
        """How many clients a round samples (before dropout).

        Raises:
            ConfigError: ``min_clients`` exceeds it, so that every round would be skipped.
        """
        sampled = max(1, round(self.client_fraction * len(self.split_clients(num_clients)[0])))
        if self.min_clients > sampled:
            raise ConfigError(f"federation.min_clients = {self.min_clients} exceeds the {sampled} clients "
                              "sampled per round; every round would be skipped")
        return sampled

    def split_clients(self, num_clients: int) -> tuple[list[int], list[int]]:
        """(training ids, unseen ids); at least one client trains."""
        unseen = min(round(self.unseen_fraction * num_clients), num_clients - 1)
        return list(range(num_clients - unseen)), list(range(num_clients - unseen, num_clients))


def sample_clients(client_ids: list[int], fraction: float, seed: int, round_idx: int) -> list[int]:
    """Sorted ids of max(1, round(fraction * len(client_ids))) clients drawn without
    replacement from ``client_ids``, seeded by (seed, round)."""
    count = max(1, round(fraction * len(client_ids)))  # = FederationConfig.clients_per_round
    rng = np.random.default_rng([int(seed), int(round_idx)])
    return sorted(int(c) for c in rng.choice(client_ids, size=count, replace=False))


@dataclass
class LoopState:
    """The loop's own resumable state (saved in every checkpoint).

    Attributes:
        next_round: The first round not yet done.
        bytes_up: Cumulative uplink bytes (initialisation included).
        bytes_down: Cumulative downlink bytes.
        clients_failed: Cumulative sampled clients that dropped out or whose update raised.
        clients_rejected: Cumulative replies left out by :func:`screen_replies`.
        rounds_skipped: Rounds that kept the previous global state (fewer than
            ``min_clients`` accepted replies).
        init_exchanges: Server-client exchanges of the strategy's initialisation stage.
        train_sample_passes: Cumulative local sample passes of the clients that replied (kept
            samples x local epochs, every model they trained; ``reply.metrics["sample_passes"]``).
        elapsed_s: Wall time of the earlier sessions of this run, in seconds.
    """

    next_round: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    clients_failed: int = 0
    clients_rejected: int = 0
    rounds_skipped: int = 0
    init_exchanges: int = 0
    train_sample_passes: int = 0
    elapsed_s: float = 0.0


class TrainingDiverged(RuntimeError):
    """Local training hit a NaN/Inf loss; the message names the round and the client."""


class StopRequested(Exception):
    """The run stopped early on request (SIGTERM/SIGINT) after a completed round."""


def initialisation_stage(strategy: Strategy) -> str:
    """The progress bar's name for the strategy's initialisation stage: the strategy's own
    ``initialisation_stage`` attribute if it has one, else "topic-model initialisation" for a
    topic-initialised strategy (FedGMI), else "<Class> initialisation"."""
    named = getattr(strategy, "initialisation_stage", None)
    if isinstance(named, str):
        return named
    if getattr(strategy, "init", None) == "topic":
        return "topic-model initialisation"
    return f"{type(strategy).__name__} initialisation"


def _short(value) -> str:
    """A metric for the progress bar: 3 decimals, NaN as n/a."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}"


EvalCallback = Callable[[int, dict[str, float], Evaluation], None]
RoundCallback = Callable[[int, LoopState, bool], None]


def client_data(clients, client_id: int):
    """Client ``client_id``'s :class:`~fedgmi.data.ClientData` in process: from a scenario or an
    :class:`~fedgmi.federated.clients.InProcessClients` pool.

    Raises:
        TypeError: the clients are not in this process (e.g. a Flower pool).
    """
    if isinstance(clients, InProcessClients):
        return clients.data(client_id)
    if hasattr(clients, "clients") and not isinstance(clients, ClientPool):
        return clients.clients[client_id]
    raise TypeError(f"the clients of {type(clients).__name__} are not in this process: train them with the "
                    "transport's own round runner")


def _client_replies(strategy: Strategy, scenario, tasks, warn) -> tuple[list, list[Exception], str | None]:
    """Run the tasks' local updates and store each client's new state; a client whose update
    raises is left out (and counted), except for a broken contract (a bug: raised at once).

    Returns:
        (replies, errors of failing clients, message of a NaN/Inf loss or ``None``).
    """
    replies, errors = [], []
    for task in tasks:
        cid = task.client_id
        try:
            reply, state = counted_client_update(strategy, task, client_data(scenario, cid),
                                                 strategy.client_state.get(cid, {}))
        except NonFiniteLossError as err:
            return replies, errors, f"round {task.round}, client {cid}: {err}"
        except ContractError:
            raise
        except Exception as err:  # noqa: BLE001 - a failing client is left out of this round
            errors.append(err)
            warn(f"round {task.round}: client {cid} failed ({type(err).__name__}: {err}); left out")
            continue
        strategy.client_state[cid] = state
        replies.append(reply)
    return replies, errors, None


def _exchange(strategy: Strategy, tasks, replies, errors, diverged) -> tuple[list, int, str | None, bool]:
    """Across ranks: every rank's replies (sorted by client id) and the clients' new state.

    Returns:
        (all replies, number of failed clients, a divergence message, whether some client
        succeeded).
    """
    fabric = strategy.fabric
    if fabric.world_size == 1:
        return replies, len(errors), diverged, bool(replies)
    cpu = torch.device("cpu")
    mine = {t.client_id: {k: v.to(cpu) for k, v in strategy.client_state[t.client_id].items()}
            for t in tasks if t.client_id in strategy.client_state}
    parts = gather(fabric, ([reply_to(r, cpu) for r in replies], len(errors), diverged, mine))
    for _, _, _, states in parts:
        strategy.client_state.update({c: {k: v.to(fabric.device) for k, v in st.items()} for c, st in states.items()})
    every = sorted((reply_to(r, fabric.device) for part in parts for r in part[0]), key=lambda r: r.client_id)
    message = next((part[2] for part in parts if part[2]), None)
    return every, sum(part[1] for part in parts), message, bool(every)


def configure_tasks(strategy: Strategy, federation: FederationConfig, seed: int, rnd: int,
                    train_ids: list[int], channel: Channel) -> tuple[list, list[int]]:
    """The server's first step of a round: sample (seeded by (seed, round)), drop out (seeded),
    configure the strategy's tasks and pass them through the channel's downlink.

    Returns:
        (the tasks as clients receive them, in client-id order; ids of the dropped clients).
    """
    sampled = sample_clients(train_ids, federation.client_fraction, seed, rnd)
    ids, dropped = drop_clients(sampled, federation.dropout_probability, seed, rnd)
    return channel.downlink(strategy.configure_round(rnd, ids)), dropped


def conclude_round(strategy: Strategy, federation: FederationConfig, rnd: int, tasks, replies,
                   failed: int, dropped: list[int], state: LoopState, warn: Callable[[str], None],
                   channel: Channel) -> dict[str, float]:
    """The server's last step of a round, on the replies that came back (sorted by client id,
    from this process, other ranks or other machines): uplink through the channel, byte
    counts, screening, the ``min_clients`` rule and aggregation; updates ``state``.

    Args:
        tasks: The round's tasks (from :func:`configure_tasks`).
        replies: The clients' :class:`~fedgmi.federated.messages.ClientReply`, before the uplink.
        failed: Sampled clients whose update raised or never replied.
        dropped: Clients dropped out by :func:`drop_clients`.

    Returns:
        As :func:`run_round`.
    """
    task_of = {t.client_id: t for t in tasks}
    replies = [channel.uplink(task_of[r.client_id], r) for r in replies]
    sent = {"bytes_up_round": sum(r.bytes_up for r in replies), "bytes_down_round": sum(t.bytes_down for t in tasks)}
    state.bytes_up += sent["bytes_up_round"]
    state.bytes_down += sent["bytes_down_round"]
    state.train_sample_passes += int(sum(r.metrics.get("sample_passes", 0.0) for r in replies))
    screening = screen_replies(replies, federation.max_update_norm_ratio)
    for client_id, why in screening.rejected.items():
        warn(f"round {rnd}: update of client {client_id} rejected: {why}")
    state.clients_failed += failed + len(dropped)
    state.clients_rejected += len(screening.rejected)
    if len(screening.accepted) < federation.min_clients:
        state.rounds_skipped += 1
        warn(f"round {rnd}: {len(screening.accepted)} accepted replies < min_clients = "
             f"{federation.min_clients}; the global state is kept as it was")
        return sent
    return {**sent, **strategy.aggregate(rnd, screening.accepted)}


def run_round(strategy: Strategy, scenario, federation: FederationConfig, seed: int, rnd: int,
              train_ids: list[int], state: LoopState, warn: Callable[[str], None],
              channel: Channel | None = None) -> dict[str, float]:
    """One round: sample, drop out, downlink, local updates (this rank's share of the clients),
    exchange across ranks, uplink through the channel (encode, count, decode: run on every rank
    in client-id order, so codec state stays identical), screening, aggregation; updates
    ``state``. (:func:`configure_tasks`, the local updates, :func:`conclude_round`; another
    transport, e.g. :mod:`fedgmi.flower`, calls the two server steps around its own.)

    Returns:
        The round's bytes (``bytes_up_round``, ``bytes_down_round``) and the strategy's round
        metrics (none of those when the round was skipped).

    Raises:
        TrainingDiverged: a client's loss became NaN/Inf (on every rank).
        Exception: a client's error, when every client of the round raised (a bug, not a flaky
            client).
    """
    channel = channel or Channel()
    tasks, dropped = configure_tasks(strategy, federation, seed, rnd, train_ids, channel)
    mine = my_slice(strategy.fabric, tasks)
    local, errors, diverged = _client_replies(strategy, scenario, mine, warn)
    replies, failed, diverged, succeeded = _exchange(strategy, mine, local, errors, diverged)
    if diverged:
        raise TrainingDiverged(diverged)
    if tasks and not succeeded:
        raise errors[0] if errors else RuntimeError(f"round {rnd}: every client failed on the other ranks")
    return conclude_round(strategy, federation, rnd, tasks, replies, failed, dropped, state, warn, channel)


#: What runs one round (:func:`run_round` in process; :mod:`fedgmi.flower` over the network).
RoundRunner = Callable[..., dict[str, float]]


def run_federation(
    strategy: Strategy,
    scenario,
    federation: FederationConfig,
    evaluation: EvalConfig,
    seed: int,
    on_eval: EvalCallback,
    on_round_end: RoundCallback | None = None,
    state: LoopState | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
    progress: bool = True,
    channel: Channel | None = None,
    round_runner: RoundRunner | None = None,
) -> tuple[dict[str, float], Evaluation | None]:
    """Run rounds ``state.next_round .. federation.rounds - 1``; evaluate and report on the way.

    Args:
        strategy: Set up strategy (initialised by this call when ``state.next_round == 0``,
            else restored from a checkpoint).
        scenario: The clients: the scenario (in process), or a
            :class:`~fedgmi.federated.clients.ClientPool` (e.g. Flower's). The strategy sees the
            clients' data only through client tasks and client steps.
        on_eval: Called after each evaluation with (round, metrics row, evaluation); writes
            outputs so that a run that fails later keeps them.
        on_round_end: Called after every round with (rounds done, state, stopping); the CLI
            writes checkpoints there.
        state: The loop state to continue from (a fresh run when ``None``).
        stop_requested: Polled after every round; when it returns True the loop calls
            ``on_round_end(..., stopping=True)`` and raises :class:`StopRequested`.
        channel: Codecs, partial upload and byte budget between server and clients (default:
            float32 both ways, everything sent, no budget).
        round_runner: Runs one round, with :func:`run_round`'s arguments and result (default
            :func:`run_round`, the clients in this process; :mod:`fedgmi.flower` sends them
            to Flower nodes).

    Returns:
        The last metrics row and evaluation (``({}, None)`` when no round was left to run).

    Raises:
        TrainingDiverged: a client's loss became NaN/Inf (outputs written so far are kept).
        StopRequested: see ``stop_requested``.
    """
    state = state or LoopState()
    started = time.perf_counter() - state.elapsed_s
    channel = channel or Channel()
    pool = client_pool(scenario, strategy)
    train_ids, unseen_ids = federation.split_clients(len(pool.client_ids))
    if getattr(pool, "scenario", None) is not None:  # only a strategy declaring uses_ground_truth (Oracle) gets it
        attach_truth(strategy, pool.scenario)
    row, result = {}, None
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}")]
    with Progress(*columns, disable=not progress, transient=False) as bar:
        def warn(message: str) -> None:
            bar.console.print(f"[yellow]fedgmi: warning: {message}", highlight=False)

        task_id = bar.add_task("starting", total=federation.rounds, completed=state.next_round, status="")

        def stage(text: str) -> None:
            bar.update(task_id, description=text)

        if state.next_round == 0:
            stage(initialisation_stage(strategy))
            init = strategy.initialize(pool.only(train_ids))
            strategy.client_state.update(init.client_states)
            state.bytes_up += int(init.bytes_up)
            state.bytes_down += int(init.bytes_down)
            state.init_exchanges = int(init.exchanges)
            channel.start(strategy.global_state)
        for rnd in range(state.next_round, federation.rounds):
            stage(f"round {rnd + 1}/{federation.rounds}")
            round_metrics = (round_runner or run_round)(strategy, pool, federation, seed, rnd, train_ids, state,
                                                        warn, channel)
            state.next_round, state.elapsed_s = rnd + 1, time.perf_counter() - started
            if (rnd + 1) % federation.eval_every == 0 or rnd + 1 == federation.rounds:
                stage(f"evaluating (round {rnd + 1}/{federation.rounds})")
                result = evaluate(strategy, pool, evaluation, seed, unseen_ids)
                row = {"round": rnd + 1, **round_metrics, **result.metrics,
                       **{k: v for k, v in asdict(state).items() if k not in ("next_round", "elapsed_s")},
                       **channel.metrics(), "wall_time_s": time.perf_counter() - started}
                on_eval(rnd + 1, row, result)
                bar.update(task_id, status=" ".join(
                    f"{name} {_short(row.get(key))}" for name, key in (
                        ("assign", "assignment_accuracy"), ("tv", "proportion_error_tv"),
                        ("acc", "client_accuracy_mean"))))
            bar.update(task_id, advance=1)
            stopping = any_rank(strategy.fabric, stop_requested())
            if on_round_end is not None:
                stage(f"checkpoint (round {rnd + 1}/{federation.rounds})")
                on_round_end(rnd + 1, state, stopping)
            if stopping and rnd + 1 < federation.rounds:
                raise StopRequested(f"stopped after round {rnd + 1} of {federation.rounds}")
        stage(f"done ({federation.rounds} rounds)")
    return row, result
