"""The run layer: one run of ``fit``, ``test``, ``validate`` or ``select_k`` from a parsed config
(prepare -> start state -> loop -> finish), writing the run folder (see the outputs guide). The
CLI (:mod:`fedgmi.cli`), the Python API (:func:`fit`, :func:`test`, re-exported by
:mod:`fedgmi`) and the Flower ServerApp all call it.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any, ParamSpec, TypeVar

import lightning
import numpy as np
import yaml
from jsonargparse import ArgumentParser, Namespace
from rich.console import Console

from fedgmi import tracking
from fedgmi.atomic import WriteFailed, write_atomic
from fedgmi.config_checks import (
    check_config_files,
    dropped_algorithm_options,
    import_class,
    summarize_parser_error,
)
from fedgmi.data import Scenario
from fedgmi.errors import ConfigError
from fedgmi.federated.channel import Channel
from fedgmi.federated.checkpoint import (
    DEPLOYMENT,
    check_signature,
    rng_states,
    save_round_checkpoint,
    scenario_signature,
    set_rng_states,
    strategy_signature,
)
from fedgmi.federated.contract import check_strategy_class
from fedgmi.federated.evaluation import Evaluation, evaluate
from fedgmi.federated.server import (
    EvalCallback,
    LoopState,
    RoundCallback,
    StopRequested,
    TrainingDiverged,
    run_federation,
)
from fedgmi.federated.strategy import ProblemSpec, Strategy
from fedgmi.outputs import RunDirectory, print_component_table, print_summary
from fedgmi.report import write_plots
from fedgmi.run_config import (
    ALGORITHMS,
    NOTES,
    SAVED_CONFIG_RESET,
    build_parser,
    dump_config,
    instantiate,
    run_path,
    saved_config,
    subcommand_parser,
)
from fedgmi.run_folder import release
from fedgmi.selection import check_selectable, print_selection, run_selection


@dataclass(frozen=True)
class FederationInfo:
    """What the server knows of the federation's data: sizes, shapes and names, never the data
    (from the scenario in process; from the nodes' answers on Flower).

    Attributes:
        num_clients: C.
        image_shape: (C, H, W) of one input.
        num_classes: Y.
        num_components: The config's true K (the default number of components to learn).
        train_sizes: Client id -> its number of training examples.
        component_names: K_true names of the inherent distributions.
        true_proportions: (C, K_true) the clients' true proportions, NaN where the server does
            not know them (a deployment: the nodes score them and send the errors only).
    """

    num_clients: int
    image_shape: tuple[int, ...]
    num_classes: int
    num_components: int
    train_sizes: dict[int, int]
    component_names: list[str]
    true_proportions: np.ndarray

    @classmethod
    def of(cls, scenario: Scenario) -> FederationInfo:
        """The info of a simulated scenario (in process)."""
        return cls(len(scenario.clients), tuple(scenario.image_shape), scenario.num_classes, scenario.num_components,
                   {c.client_id: len(c.x_train) for c in scenario.clients}, list(scenario.component_names),
                   scenario.truth.proportions.numpy())


@dataclass
class Prepared:
    """Everything a subcommand works with, built from its config (``scenario`` is ``None`` on
    a Flower server: it holds no client's data)."""

    scenario: Scenario | None
    strategy: Strategy
    fabric: lightning.Fabric
    run: RunDirectory
    objs: Namespace
    unseen: set[int]
    checkpoint: dict | None
    info: FederationInfo



def prepare(parser: ArgumentParser, cfg: Namespace, checked: tuple | None = None,
            info: FederationInfo | None = None) -> Prepared:
    """Config -> scenario, strategy (set up, restored from the checkpoint if any), Fabric and run
    directory (created once every input checked; config.yaml written once everything matched).
    ``checked``: what :func:`instantiate` returned, when the caller ran it already; ``info``:
    the federation's sizes and shapes when there is no scenario (a Flower server)."""
    objs, scenario, checkpoint = checked or instantiate(parser, cfg)
    info = info or FederationInfo.of(scenario)
    sub_cfg = cfg[cfg.subcommand]
    path = run_path(cfg.subcommand, sub_cfg, objs)
    resuming = cfg.subcommand == "fit" and checkpoint is not None
    wandb_id = checkpoint.get("wandb_id") if resuming else None
    loggers, notes = tracking.build_loggers(objs.logging, path, path.name, wandb_id)
    for note in notes:
        print(f"fedgmi: {note}", file=sys.stderr)
    fabric = objs.fabric.build(loggers)
    run = RunDirectory(fabric.broadcast(str(path), src=0))  # the same folder on every rank
    lightning.seed_everything(sub_cfg.seed, verbose=False)
    train_ids, unseen_ids = objs.federation.split_clients(info.num_clients)
    spec = ProblemSpec(tuple(info.image_shape), int(objs.algorithm.num_components or info.num_components),
                       info.num_classes, info.num_clients, sum(info.train_sizes[c] for c in train_ids))
    objs.algorithm.setup(spec, fabric, sub_cfg.seed)
    if checkpoint is not None:
        signature = strategy_signature(objs.algorithm.name, objs.algorithm.global_state)
        check_signature(sub_cfg.ckpt_path, checkpoint["signature"], signature)
        objs.algorithm.load_state_dict(checkpoint["strategy"])
    config_text = saved_config(parser, cfg)
    if fabric.is_global_zero:
        run.write_config(config_text)
    tracking.log_hyperparams(fabric, yaml.safe_load(config_text))
    unseen = set(unseen_ids)
    return Prepared(scenario, objs.algorithm, fabric, run, objs, unseen, checkpoint, info)


def write_evaluation(p: Prepared, result: Evaluation, row: dict) -> None:
    """proportions.csv and component_accuracy.csv of one evaluation."""
    p.run.write_proportions(result, p.info.true_proportions, p.info.component_names, p.unseen)
    p.run.write_component_accuracy(result, p.info.component_names)


def finish(p: Prepared, row: dict, result: Evaluation, wall_time_s: float, console: Console) -> dict:
    """metrics.json, plots (also sent to the loggers), the summary and the component table."""
    names = p.info.component_names
    final = {**row, "rounds": p.objs.federation.rounds, "wall_time_s": wall_time_s,
             "component_matching": result.mapping,
             "test_nll_per_component": dict(zip(names, result.test_nll)),
             "component_accuracy": result.component_accuracy,
             "component_accuracy_matched": result.component_accuracy_matched,
             "client_model_accuracy": dict(zip(names, result.client_model_accuracy))}
    p.run.write_metrics_json(final)
    tracking.finish(p.fabric, write_plots(p.run.path, p.strategy, p.scenario, result, seed=p.objs.seed, info=p.info,
                                          rounds=p.objs.federation.rounds))
    print_summary(final, p.run.path, console, algorithm=type(p.strategy).__name__)
    print_component_table(result, names, console)
    return final


def checkpoint_state(p: Prepared, loop: LoopState) -> dict:
    """Everything a resume needs (see :mod:`fedgmi.federated.checkpoint`)."""
    return {"round": loop.next_round, "loop": asdict(loop), "strategy": p.strategy.state_dict(),
            "channel": p.objs.channel.state_dict(),
            "rng": rng_states(), "wandb_id": tracking.wandb_run_id(p.fabric),
            "signature": strategy_signature(p.strategy.name, p.strategy.global_state),
            "scenario": DEPLOYMENT if p.scenario is None else
            scenario_signature(p.scenario, p.objs.seed, p.objs.federation.unseen_fraction)}


def resume_command(run: Path) -> str:
    """The command that continues the run in ``run`` from its newest checkpoint."""
    return f"fedgmi fit --config {run / 'config.yaml'} --ckpt_path {run / 'checkpoints' / 'last.ckpt'}"


def start_state(p: Prepared, console: Console) -> LoopState:
    """The loop state a fit starts from: fresh, or the checkpoint's, with the random states and
    the channel restored and the histories (metrics.csv, logs/metrics.csv, W&B) trimmed back to
    it (rows written after the checkpoint are written again)."""
    loop = LoopState()
    if p.checkpoint is not None:
        loop = LoopState(**p.checkpoint["loop"])
        set_rng_states(p.checkpoint["rng"])
        p.objs.channel.load_state_dict(p.checkpoint["channel"], p.fabric.device)
        if p.fabric.is_global_zero:
            p.run.truncate_metrics(loop.next_round)
            tracking.truncate_csv_log(p.run.path, loop.next_round)
            tracking.replay_to_wandb(p.fabric, p.run.path / "metrics.csv")
        console.print(f"resuming {p.run.path} after round {loop.next_round}")
    if p.fabric.is_global_zero:
        console.print(p.scenario.summary() if p.scenario is not None else
                      f"federation: {p.info.num_clients} clients on Flower nodes, inputs {p.info.image_shape}, "
                      f"{p.info.num_classes} classes (the server holds no client's data)")
    return loop


def loop_callbacks(p: Prepared) -> tuple[dict, EvalCallback, RoundCallback]:
    """``(last, on_eval, on_round_end)`` of a fit: rank 0 writes each evaluation's rows, tables
    and logs (``last["row"]`` keeps the newest row) and the round checkpoints."""
    fed = p.objs.federation
    last: dict[str, dict] = {"row": {}}

    def on_eval(rnd: int, row: dict, result: Evaluation) -> None:
        last["row"] = row
        if not p.fabric.is_global_zero:  # every rank evaluates (identically); rank 0 writes
            return
        p.run.append_metrics(row)
        tracking.log_metrics(p.fabric, row)
        write_evaluation(p, result, row)

    def on_round_end(rounds_done: int, state: LoopState, stopping: bool) -> None:
        if stopping or rounds_done % fed.checkpoint_every == 0 or rounds_done == fed.rounds:
            save_round_checkpoint(p.fabric, p.run.checkpoint_path.parent, rounds_done,
                                  checkpoint_state(p, state), fed.keep_checkpoints)

    return last, on_eval, on_round_end


@dataclass(frozen=True)
class RunResult:
    """What :func:`fit` and :func:`test` return.

    Attributes:
        path: The run folder (``fit``) or test folder (``test``) written.
        metrics: The final metrics, as written to ``metrics.json`` (other ranks than 0 of a
            multi-process run: the final evaluation row only).
    """

    path: Path
    metrics: dict[str, Any]


T = TypeVar("T")
P = ParamSpec("P")


def releasing(run: Callable[P, T]) -> Callable[P, T]:
    """``run``, then (however it ends) this process's run folders unlocked (:mod:`fedgmi.run_folder`):
    a process may run several times (the API, tests), into the same folder too."""

    @functools.wraps(run)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return run(*args, **kwargs)
        finally:
            release()

    return wrapper


@releasing
def run_fit(parser: ArgumentParser, cfg: Namespace, console: Console) -> RunResult:
    """Train (or resume), evaluating and writing outputs and checkpoints along the way."""
    p = prepare(parser, cfg)
    loop = start_state(p, console)
    fed = p.objs.federation
    last, on_eval, on_round_end = loop_callbacks(p)
    resume = resume_command(p.run.path)
    try:
        with stop_on_signals(console, resume, p.run.checkpoint_path) as received:
            row, result = run_federation(p.strategy, p.scenario, fed, p.objs.evaluation, cfg.fit.seed,
                                         on_eval, on_round_end, loop, lambda: bool(received),
                                         progress=console.is_terminal and p.fabric.is_global_zero,
                                         channel=p.objs.channel)
    except StopRequested as err:
        raise Stopped(f"{signal.Signals(received[0]).name}: {err}; resume with: {resume}",
                      128 + received[0]) from None
    except TrainingDiverged as err:
        p.run.write_metrics_json({**last["row"], "status": "diverged", "error": str(err)})
        raise Stopped(f"training diverged at {err}; outputs so far are in {p.run.path}", 1) from None
    except WriteFailed as err:
        then = f"make room, then resume with: {resume}" if p.run.checkpoint_path.is_file() else \
            f"no checkpoint was written yet: make room, then start again with --output_dir {p.run.path} --overwrite"
        raise Stopped(f"error: {err}; {then}", 2) from None
    if result is None:
        raise ConfigError(f"nothing to do: the checkpoint is already at federation.rounds = {fed.rounds}")
    if not p.fabric.is_global_zero:
        return RunResult(p.run.path, row)
    return RunResult(p.run.path, finish(p, row, result, loop.elapsed_s, console))


@releasing
def run_test(parser: ArgumentParser, cfg: Namespace, console: Console) -> RunResult:
    """Evaluate a checkpoint with the run's config into a new folder (``test-<time>`` in the
    run, or ``--output_dir``): its own config, metrics, tables, plots and logs. The run's
    training files are left as they were."""
    started = time.perf_counter()
    if not cfg.test.ckpt_path:
        raise ConfigError("ckpt_path: test needs --ckpt_path, a checkpoint written by fedgmi fit")
    p = prepare(parser, cfg)
    result = evaluate(p.strategy, p.scenario, p.objs.evaluation, cfg.test.seed, p.unseen)
    assert p.checkpoint is not None  # prepare loaded it (ckpt_path is required)
    row = {"round": int(p.checkpoint["round"]), **result.metrics}
    p.run.append_metrics(row)
    tracking.log_metrics(p.fabric, row)
    write_evaluation(p, result, row)
    return RunResult(p.run.path, finish(p, row, result, time.perf_counter() - started, console))


def run_validate(parser: ArgumentParser, cfg: Namespace, console: Console) -> dict:
    """Check the config, its data files, the output folder and the checkpoint; run and write
    nothing (no folder, no download)."""
    objs, scenario, checkpoint = instantiate(parser, cfg)
    assert scenario is not None  # instantiate builds it unless told data=False
    console.print(f"config OK: {type(objs.algorithm).__name__}, {len(scenario.clients)} clients, "
                  f"K = {scenario.num_components}, {objs.federation.rounds} rounds"
                  + (f"; checkpoint at round {checkpoint['round']}" if checkpoint else ""))
    return {}


@releasing
def run_select_k(parser: ArgumentParser, cfg: Namespace, console: Console) -> dict:
    """Choose K (:mod:`fedgmi.selection`): one run folder with a ``k<K>/`` folder per K (its
    config.yaml, runnable by ``fedgmi fit``, per-round metrics.csv, per-client held_out.csv),
    selection.json, selection.csv and selection.png."""
    notes = NOTES.pop(parser, [])  # printed once select_k accepts the algorithm too: a refusal stays one line
    checked = instantiate(parser, cfg)
    check_selectable(checked[0].algorithm)  # before any folder is created
    for note in notes:
        print(f"fedgmi: {note}", file=sys.stderr)
    p = prepare(parser, cfg, checked)
    sub_cfg, fit_parser = cfg.select_k, subcommand_parser(parser, "fit")
    select_parser = subcommand_parser(parser, "select_k")

    def make_run(k: int, folder: Path) -> tuple[Strategy, Channel]:
        k_cfg = sub_cfg.clone()
        k_cfg.algorithm.init_args.num_components = k
        objs = select_parser.instantiate(k_cfg)
        if p.fabric.is_global_zero:
            folder.mkdir()  # inside a run folder made new for this selection: never overwrites
            fit_cfg = k_cfg.clone()  # what `fedgmi fit` runs (on the full training parts), into a new folder
            del fit_cfg["selection"]
            fit_cfg.update(Namespace(SAVED_CONFIG_RESET))
            write_atomic(folder / "config.yaml", dump_config(fit_parser, fit_cfg))
        return objs.algorithm, objs.channel

    try:
        found = run_selection(make_run, p.scenario, p.objs.federation, p.objs.evaluation, p.objs.selection,
                              sub_cfg.seed, p.fabric, p.run.path, console,
                              progress=console.is_terminal and p.fabric.is_global_zero)
    except TrainingDiverged as err:
        raise Stopped(f"training diverged at {err}; outputs so far are in {p.run.path}", 1) from None
    except KeyboardInterrupt:
        raise Stopped(f"SIGINT: selection stopped; the K finished so far are in {p.run.path}",
                      128 + signal.SIGINT) from None
    if p.fabric.is_global_zero:
        tracking.finish(p.fabric, {"selection": p.run.path / "selection.png"})
        print_selection(found, p.run.path, console)
    return found.to_json()


class Stopped(Exception):
    """The run stopped before its end (a signal, or divergence); carries the exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@contextmanager
def stop_on_signals(console: Console, resume: str = "", checkpoint: Path | None = None) -> Iterator[list[int]]:
    """While inside, SIGTERM and SIGINT ask the loop to stop after the current round (it writes
    a checkpoint first); a second signal stops the process at once, with one line on stderr
    (the resume command, or that no checkpoint exists yet) and exit status 128 + signal.
    Yields the list of signals received."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if received:
            name = signal.Signals(signum).name
            if checkpoint is not None and checkpoint.is_file():
                line = f"fedgmi: {name} again: stopped at once; resume with: {resume}"
            else:
                line = f"fedgmi: {name} again: stopped at once, before the first checkpoint; start again"
            try:
                sys.stdout.flush()
            finally:
                os.write(2, (line + "\n").encode())
                os._exit(128 + signum)
        received.append(signum)
        console.print(f"[yellow]fedgmi: {signal.Signals(signum).name} received: stopping after this round "
                      "(a checkpoint is written first); send it again to stop now")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        if not received:  # once stopping, a further signal still ends at once with one line
            for sig, old in previous.items():
                signal.signal(sig, old)


ConfigSource = str | os.PathLike | Mapping[str, Any]
"""A config: a YAML file's path, or a mapping of sections as such a file holds."""


def _config_args(config: ConfigSource | Sequence[ConfigSource]) -> list[str]:
    """``--config`` arguments, one per source (later ones override earlier ones)."""
    sources = [config] if isinstance(config, (str, os.PathLike, Mapping)) else list(config)
    args: list[str] = []
    for source in sources:
        if isinstance(source, Mapping):  # jsonargparse takes a config's text in place of its path
            args += ["--config", yaml.safe_dump(_plain(source), sort_keys=False)]
        else:
            args += ["--config", os.fspath(source)]
    return args


def _plain(value: Any) -> Any:
    """``value`` with mappings as dicts and tuples as lists (what YAML writes)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _flag_value(value: Any) -> str:
    """A Python value as jsonargparse parses a flag's value (YAML): strings as they are."""
    value = _plain(value)
    return value if isinstance(value, str) else json.dumps(value)


def command_args(subcommand: str, config: ConfigSource | Sequence[ConfigSource] = (),
                 overrides: Mapping[str, Any] | None = None, **options: Any) -> list[str]:
    """The ``fedgmi`` command line (without ``fedgmi``) of a run: the configs in order, then
    ``options`` (``seed``, ``output_dir``, ``ckpt_path``, ``overwrite``; ``None`` left out),
    then the dotted ``overrides`` (``{"federation.rounds": 2}``)."""
    args = [subcommand, *_config_args(config)]
    for key, value in options.items():
        if value is not None:
            args += [f"--{key}", _flag_value(value)]
    for key, value in (overrides or {}).items():
        args += [f"--{key}", _flag_value(value)]
    return args


def parse(args: Sequence[str]) -> tuple[ArgumentParser, Namespace]:
    """The ``fedgmi`` parser and ``args`` parsed by it (the command line without ``fedgmi``).

    Raises:
        ConfigError: An unreadable config file, an unknown key or a value of the wrong type
            (one line naming the key).
    """
    args = list(args)
    check_config_files(args)
    parser = build_parser()
    try:
        cfg = parser.parse_args(args)
    except Exception as err:  # jsonargparse's ArgumentError and friends
        if type(err).__name__ != "ArgumentError":
            raise
        _refuse_incomplete_strategy(str(err))
        raise ConfigError(summarize_parser_error(str(err), ALGORITHMS)) from None
    algorithm = cfg[cfg.subcommand].get("algorithm")
    dropped = dropped_algorithm_options(args, algorithm.get("init_args") if algorithm else None)
    if dropped:
        NOTES.setdefault(parser, []).append(dropped)
    return parser, cfg


def _refuse_incomplete_strategy(message: str) -> None:
    """A parser error that refuses an abstract class as ``algorithm``: raise the contract's own
    line instead (the required hooks the class leaves out)."""
    found = re.search(r"but (\S+) is abstract", message)
    cls = import_class(found.group(1)) if found and message.lstrip().startswith("Parser key \"algorithm\"") \
        else None
    if cls is not None:
        check_strategy_class(cls)


def fit(config: ConfigSource | Sequence[ConfigSource] = (), *, seed: int | None = None,
        output_dir: str | os.PathLike | None = None, ckpt_path: str | os.PathLike | None = None,
        overwrite: bool = False, overrides: Mapping[str, Any] | None = None,
        console: Console | None = None) -> RunResult:
    """Train and evaluate a federation as ``fedgmi fit`` does, writing the same run folder.

    ``fedgmi.fit("configs/pm_digits.yaml", seed=0, overrides={"federation.rounds": 2})`` is
    ``fedgmi fit --config configs/pm_digits.yaml --seed 0 --federation.rounds 2``.

    Args:
        config: A config file's path, a mapping of sections (as a config file holds), or a
            list of them (later ones override earlier ones, as repeated ``--config``).
        seed: The run's seed (default 0), >= 0.
        output_dir: The run folder (default a new ``runs/<dataset>-<algorithm>-<time>``).
        ckpt_path: Resume from this checkpoint (same round, client and random state).
        overwrite: Replace the run that ``output_dir`` holds.
        overrides: Dotted keys over the config, as the command line's flags, e.g.
            ``{"federation.rounds": 2, "algorithm": {"class_path": "FedAvg"}}``.
        console: Where the progress, summary and tables go (default: a new rich Console on
            stdout; ``Console(quiet=True)`` for none).

    Returns:
        The run folder and the final metrics (as its ``metrics.json``).

    Raises:
        ConfigError: A bad input, before any work (one line naming the key).
        Stopped: The run stopped early (a signal: resumable from its checkpoint; or a NaN/Inf
            loss); ``status`` is the exit status the CLI would give.
    """
    parser, cfg = parse(command_args("fit", config, overrides, seed=seed, output_dir=output_dir,
                                     ckpt_path=ckpt_path, overwrite=overwrite or None))
    return run_fit(parser, cfg, console or Console())


def test(config: ConfigSource | Sequence[ConfigSource] = (), *, ckpt_path: str | os.PathLike,
         seed: int | None = None, output_dir: str | os.PathLike | None = None,
         overrides: Mapping[str, Any] | None = None, console: Console | None = None) -> RunResult:
    """Evaluate a checkpoint written by :func:`fit` as ``fedgmi test`` does (no training), into
    a new ``test-<time>`` folder of its run (or ``output_dir``).

    Args:
        config: The run's config (its ``config.yaml``), as in :func:`fit`.
        ckpt_path: The checkpoint, e.g. ``<run>/checkpoints/last.ckpt``.
        seed: The evaluation's seed (default 0).
        output_dir: The test folder (default ``<run>/test-<time>``).
        overrides: Dotted keys over the config, as in :func:`fit`.
        console: As in :func:`fit`.

    Returns:
        The test folder and its metrics (as its ``metrics.json``).

    Raises:
        ConfigError: A bad input, before any work (one line naming the key).
    """
    parser, cfg = parse(command_args("test", config, overrides, seed=seed, output_dir=output_dir,
                                     ckpt_path=ckpt_path))
    return run_test(parser, cfg, console or Console())


test.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported into one
