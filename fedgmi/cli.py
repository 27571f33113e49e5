"""``fedgmi`` command line: parsing and wiring only (config -> objects -> run).

``fedgmi fit --config FILE`` trains and evaluates (``--ckpt_path PATH`` resumes a run exactly:
same round, client state and random state); ``fedgmi test --config FILE --ckpt_path PATH``
evaluates a finished run's checkpoint without training and writes the same metric files;
``fedgmi validate --config FILE`` checks a config, its data files and a checkpoint, and runs
nothing.

Follows LightningCLI's conventions through jsonargparse: ``--config`` (repeatable, later files
and flags override earlier ones), ``--print_config``, dotted overrides such as
``--federation.rounds 5``, and ``class_path``/``init_args`` for swappable parts (the
algorithm, its component model and its optimizer). An invalid value stops before any work with
one line on stderr and exit status 2. SIGTERM/SIGINT stop a fit after the current round with a
checkpoint (exit 128 + signal number); a NaN/Inf training loss stops it with exit status 1 and a
line naming the round and the client, keeping every output written so far.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace, lazy_instance
from rich.console import Console

import fedgmi.algorithms  # noqa: F401 - every algorithm, so that its class name selects it
from fedgmi import tracking
from fedgmi.algorithms.gmi import FedGMI
from fedgmi.data import ScenarioConfig, build_scenario
from fedgmi.errors import ConfigError
from fedgmi.federated.channel import Channel
from fedgmi.federated.checkpoint import (
    check_signature,
    load_checkpoint,
    rng_states,
    save_round_checkpoint,
    set_rng_states,
    strategy_signature,
)
from fedgmi.federated.evaluation import EvalConfig, evaluate
from fedgmi.federated.server import (
    FederationConfig,
    LoopState,
    StopRequested,
    TrainingDiverged,
    run_federation,
)
from fedgmi.federated.strategy import ProblemSpec, Strategy
from fedgmi.outputs import RunDirectory, default_output_dir, print_component_table, print_summary
from fedgmi.report import write_plots
from fedgmi.tracking import LoggingConfig
from fedgmi.validation import check_choice, check_int

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "64-true")
ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps")


@dataclass
class FabricConfig:
    """Devices and precision, passed to ``lightning.Fabric``.

    Attributes:
        accelerator: "cpu", "cuda", "gpu", "mps" or "auto".
        devices: Processes (devices) per node; with more than one in all, each rank simulates
            its share of every round's clients (:mod:`fedgmi.federated.distributed`), with
            Fabric's "ddp" strategy for the launch and the collectives (gloo on CPU).
        num_nodes: Nodes (launched by ``torchrun`` or ``fabric run``, see the README).
        precision: One of 32-true, bf16-mixed, 16-mixed, 64-true.
    """

    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    precision: str = "32-true"

    def __post_init__(self) -> None:
        check_choice("fabric.accelerator", self.accelerator, ACCELERATORS)
        check_choice("fabric.precision", self.precision, PRECISIONS)
        check_int("fabric.devices", self.devices, 1)
        check_int("fabric.num_nodes", self.num_nodes, 1)

    def build(self, loggers) -> lightning.Fabric:
        """The launched Fabric (several processes: strategy "ddp"). Under ``fabric run`` (which
        sets LT_CLI_USED=1) the processes exist already and Fabric joins them itself."""
        several = self.devices * self.num_nodes > 1
        fabric = lightning.Fabric(accelerator=self.accelerator, devices=self.devices, num_nodes=self.num_nodes,
                                  strategy="ddp" if several else "auto", precision=self.precision,
                                  loggers=loggers)
        if not int(os.environ.get("LT_CLI_USED", "0")):
            fabric.launch()
        return fabric


def _run_parser(description: str, ckpt_help: str | None) -> ArgumentParser:
    """Arguments shared by ``fit``, ``test`` and ``validate``; ``--ckpt_path`` when
    ``ckpt_help`` is given."""
    parser = ArgumentParser(description=description, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run (training and evaluation)")
    parser.add_argument("--output_dir", type=str | None, default=None,
                        help="run directory (default runs/<dataset>-<algorithm>-<time>; when resuming, "
                             "the checkpoint's run directory)")
    if ckpt_help:
        parser.add_argument("--ckpt_path", type=str | None, default=None, help=ckpt_help)
    parser.add_class_arguments(ScenarioConfig, "scenario")
    parser.add_class_arguments(FederationConfig, "federation")
    parser.add_class_arguments(EvalConfig, "evaluation")
    parser.add_class_arguments(FabricConfig, "fabric")
    parser.add_class_arguments(Channel, "channel")  # codecs, partial upload, byte budget
    parser.add_class_arguments(LoggingConfig, "logging")
    parser.add_subclass_arguments(Strategy, "algorithm", default=lazy_instance(FedGMI), required=False)
    return parser


def build_parser() -> ArgumentParser:
    """The ``fedgmi`` parser with its ``fit``, ``test`` and ``validate`` subcommands."""
    parser = ArgumentParser(prog="fedgmi", description="Federated learning under probabilistic mixtures.",
                            exit_on_error=False)
    subcommands = parser.add_subcommands(dest="subcommand")
    subcommands.add_subcommand("fit", _run_parser(
        "Train and evaluate a federated mixture.",
        "resume from this checkpoint (its run directory, round, client and random state)"))
    subcommands.add_subcommand("test", _run_parser(
        "Evaluate a finished run's checkpoint (no training) and write its metric files.",
        "checkpoint written by fit (required)"))
    subcommands.add_subcommand("validate", _run_parser(
        "Check a config (every field, the data files, the checkpoint) without running anything.",
        "a checkpoint to check too"))
    return parser


@dataclass
class Prepared:
    """Everything a subcommand works with, built from its config."""

    scenario: object
    strategy: Strategy
    fabric: lightning.Fabric
    run: RunDirectory
    objs: Namespace
    unseen: set[int]
    checkpoint: dict | None


def instantiate(parser: ArgumentParser, cfg: Namespace) -> tuple[Namespace, object, dict | None]:
    """Validate everything before any work: config objects, the scenario (data files) and the
    checkpoint, if one is given. Raises ConfigError (one line) on the first bad input."""
    sub_parser = parser._subcommands_action._name_parser_map[cfg.subcommand]
    sub_cfg = cfg[cfg.subcommand]
    try:
        objs = sub_parser.instantiate(sub_cfg)
    except (TypeError, ValueError) as err:  # a component's own check, e.g. a bad init_args value
        raise ConfigError(_one_line(str(err))) from None
    checkpoint = load_checkpoint(sub_cfg.ckpt_path) if sub_cfg.get("ckpt_path") else None
    if checkpoint and checkpoint["loop"]["next_round"] > objs.federation.rounds:
        raise ConfigError(f"checkpoint {sub_cfg.ckpt_path!r} is at round {checkpoint['loop']['next_round']}, "
                          f"past federation.rounds = {objs.federation.rounds}")
    scenario = build_scenario(objs.scenario)
    objs.federation.clients_per_round(len(scenario.clients))
    return objs, scenario, checkpoint


def _run_path(sub_cfg: Namespace, objs: Namespace, suffix: str) -> Path:
    """--output_dir; else the run directory of a checkpoint being resumed; else a new one."""
    if sub_cfg.output_dir:
        return Path(sub_cfg.output_dir)
    ckpt = Path(sub_cfg.ckpt_path) if sub_cfg.get("ckpt_path") and not suffix else None
    if ckpt is not None and ckpt.parent.name == "checkpoints":
        return ckpt.parent.parent
    return default_output_dir(f"{objs.scenario.dataset}-{type(objs.algorithm).__name__.lower()}{suffix}")


def prepare(parser: ArgumentParser, cfg: Namespace, suffix: str = "") -> Prepared:
    """Config -> scenario, strategy (set up, restored from the checkpoint if any), Fabric and run
    directory (config.yaml written last, once everything matched)."""
    objs, scenario, checkpoint = instantiate(parser, cfg)
    sub_parser = parser._subcommands_action._name_parser_map[cfg.subcommand]
    sub_cfg = cfg[cfg.subcommand]
    path = _run_path(sub_cfg, objs, suffix)
    wandb_id = checkpoint.get("wandb_id") if checkpoint and not suffix else None
    loggers, notes = tracking.build_loggers(objs.logging, path, path.name, wandb_id)
    for note in notes:
        print(f"fedgmi: {note}", file=sys.stderr)
    fabric = objs.fabric.build(loggers)
    run = RunDirectory(fabric.broadcast(str(path), src=0))  # the same folder on every rank
    lightning.seed_everything(sub_cfg.seed, verbose=False)
    train_ids, unseen_ids = objs.federation.split_clients(len(scenario.clients))
    spec = ProblemSpec(scenario.image_shape, scenario.num_components, scenario.num_classes, len(scenario.clients),
                       train_examples=sum(len(scenario.clients[c].x_train) for c in train_ids))
    objs.algorithm.setup(spec, fabric, sub_cfg.seed)
    if checkpoint is not None:
        signature = strategy_signature(objs.algorithm.name, objs.algorithm.global_state)
        check_signature(sub_cfg.ckpt_path, checkpoint["signature"], signature)
        objs.algorithm.load_state_dict(checkpoint["strategy"])
    config_text = sub_parser.dump(sub_cfg)
    if fabric.is_global_zero:
        run.write_config(config_text)
    tracking.log_hyperparams(fabric, yaml.safe_load(config_text))
    unseen = set(unseen_ids)
    return Prepared(scenario, objs.algorithm, fabric, run, objs, unseen, checkpoint)


def write_evaluation(p: Prepared, result, row: dict) -> None:
    """proportions.csv and component_accuracy.csv of one evaluation."""
    p.run.write_proportions(result, p.scenario.truth.proportions.numpy(), p.scenario.component_names, p.unseen)
    p.run.write_component_accuracy(result, p.scenario.component_names)


def finish(p: Prepared, row: dict, result, wall_time_s: float, console: Console) -> dict:
    """metrics.json, plots (also sent to the loggers), the summary and the component table."""
    names = p.scenario.component_names
    final = {**row, "rounds": p.objs.federation.rounds, "wall_time_s": wall_time_s,
             "component_matching": result.mapping,
             "test_nll_per_component": dict(zip(names, result.test_nll)),
             "component_accuracy": result.component_accuracy,
             "component_accuracy_matched": result.component_accuracy_matched,
             "client_model_accuracy": dict(zip(names, result.client_model_accuracy))}
    p.run.write_metrics_json(final)
    tracking.finish(p.fabric, write_plots(p.run.path, p.strategy, p.scenario, result, seed=p.objs.seed))
    print_summary(final, p.run.path, console)
    print_component_table(result, names, console)
    return final


def checkpoint_state(p: Prepared, loop: LoopState) -> dict:
    """Everything a resume needs (see :mod:`fedgmi.federated.checkpoint`)."""
    return {"round": loop.next_round, "loop": asdict(loop), "strategy": p.strategy.state_dict(),
            "channel": p.objs.channel.state_dict(),
            "rng": rng_states(), "wandb_id": tracking.wandb_run_id(p.fabric),
            "signature": strategy_signature(p.strategy.name, p.strategy.global_state)}


def fit(parser: ArgumentParser, cfg: Namespace, console: Console) -> dict:
    """Train (or resume), evaluating and writing outputs and checkpoints along the way."""
    p = prepare(parser, cfg)
    loop = LoopState()
    if p.checkpoint is not None:
        loop = LoopState(**p.checkpoint["loop"])
        set_rng_states(p.checkpoint["rng"])
        p.objs.channel.load_state_dict(p.checkpoint["channel"], p.fabric.device)
        if p.fabric.is_global_zero:
            p.run.truncate_metrics(loop.next_round)
        console.print(f"resuming {p.run.path} after round {loop.next_round}")
    if p.fabric.is_global_zero:
        console.print(p.scenario.summary())
    fed = p.objs.federation
    last = {"row": {}}

    def on_eval(rnd: int, row: dict, result) -> None:
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

    try:
        with stop_on_signals(console) as received:
            row, result = run_federation(p.strategy, p.scenario, fed, p.objs.evaluation, cfg.fit.seed,
                                         on_eval, on_round_end, loop, lambda: bool(received),
                                         progress=console.is_terminal and p.fabric.is_global_zero,
                                         channel=p.objs.channel)
    except StopRequested as err:
        resume = f"fedgmi fit --config {p.run.path / 'config.yaml'} --ckpt_path {p.run.checkpoint_path}"
        raise Stopped(f"{signal.Signals(received[0]).name}: {err}; resume with: {resume}",
                      128 + received[0]) from None
    except TrainingDiverged as err:
        p.run.write_metrics_json({**last["row"], "status": "diverged", "error": str(err)})
        raise Stopped(f"training diverged at {err}; outputs so far are in {p.run.path}", 1) from None
    if result is None:
        raise ConfigError(f"nothing to do: the checkpoint is already at federation.rounds = {fed.rounds}")
    if not p.fabric.is_global_zero:
        return row
    return finish(p, row, result, loop.elapsed_s, console)


def test(parser: ArgumentParser, cfg: Namespace, console: Console) -> dict:
    """Evaluate a checkpoint with the run's config; write the same metric files."""
    started = time.perf_counter()
    if not cfg.test.ckpt_path:
        raise ConfigError("test needs --ckpt_path, a checkpoint written by fedgmi fit")
    p = prepare(parser, cfg, suffix="-test")
    result = evaluate(p.strategy, p.scenario, p.objs.evaluation, cfg.test.seed, p.unseen)
    row = {"round": int(p.checkpoint["round"]), **result.metrics}
    p.run.append_metrics(row)
    tracking.log_metrics(p.fabric, row)
    write_evaluation(p, result, row)
    return finish(p, row, result, time.perf_counter() - started, console)


def validate(parser: ArgumentParser, cfg: Namespace, console: Console) -> dict:
    """Check the config, its data files and the checkpoint; run and write nothing."""
    objs, scenario, checkpoint = instantiate(parser, cfg)
    console.print(f"config OK: {type(objs.algorithm).__name__}, {len(scenario.clients)} clients, "
                  f"K = {scenario.num_components}, {objs.federation.rounds} rounds"
                  + (f"; checkpoint at round {checkpoint['round']}" if checkpoint else ""))
    return {}


class Stopped(Exception):
    """The run stopped before its end (a signal, or divergence); carries the exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@contextmanager
def stop_on_signals(console: Console):
    """While inside, SIGTERM and SIGINT ask the loop to stop after the current round (it writes
    a checkpoint first); a second signal stops at once. Yields the list of signals received."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signum)
        console.print(f"[yellow]fedgmi: {signal.Signals(signum).name} received: stopping after this round "
                      "(a checkpoint is written first); send it again to stop now")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


COMMANDS = {"fit": fit, "test": test, "validate": validate}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedgmi`` console script; returns the exit status."""
    console = Console()
    parser = build_parser()
    try:
        cfg = parser.parse_args(argv)
        COMMANDS[cfg.subcommand](parser, cfg, console)
        return 0
    except ConfigError as err:
        print(f"fedgmi: error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    except Stopped as err:
        print(f"fedgmi: {err}", file=sys.stderr)
        return err.status
    except Exception as err:  # jsonargparse's ArgumentError and friends
        if type(err).__name__ != "ArgumentError":
            raise
        print(f"fedgmi: error: {_one_line(str(err))}", file=sys.stderr)
        return 2


def _one_line(message: str) -> str:
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    return " ".join(lines)[:500]


if __name__ == "__main__":
    sys.exit(main())
