"""``fedgmi`` command line: parsing and wiring only (config -> objects -> run).

``fedgmi fit --config FILE`` trains and evaluates (``--ckpt_path PATH`` resumes a run exactly:
same round, client state and random state); ``fedgmi test --config FILE --ckpt_path PATH``
evaluates a finished run's checkpoint without training and writes the same metric files;
``fedgmi validate --config FILE`` checks a config, its data files and a checkpoint, and runs
nothing; ``fedgmi select_k --config FILE --selection.k_max 5`` chooses the number of components
K by held-out federated likelihood (:mod:`fedgmi.selection`).

Follows LightningCLI's conventions through jsonargparse: ``--config`` (repeatable, later files
and flags override earlier ones), ``--print_config``, dotted overrides such as
``--federation.rounds 5``, and ``class_path``/``init_args`` for swappable parts (the
algorithm, its component model and its optimizer). An invalid value stops before any work with
one line on stderr and exit status 2. SIGTERM/SIGINT stop a fit after the current round with a
checkpoint (exit 128 + signal number); a NaN/Inf training loss stops it with exit status 1 and a
line naming the round and the client, keeping every output written so far.
"""

from __future__ import annotations

import copy
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning
import torch
import yaml
from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser, Namespace, lazy_instance
from rich.console import Console

import fedgmi
import fedgmi.algorithms
from fedgmi import tracking
from fedgmi.algorithms.gmi import FedGMI
from fedgmi.atomic import WriteFailed, write_atomic
from fedgmi.config_checks import (
    check_config_files,
    check_optimizers,
    config_error,
    one_line,
    summarize_parser_error,
    warn_unread_fields,
)
from fedgmi.data import ScenarioConfig, build_scenario
from fedgmi.errors import ConfigError
from fedgmi.federated.channel import Channel
from fedgmi.federated.checkpoint import (
    check_scenario,
    check_signature,
    load_checkpoint,
    rng_states,
    save_round_checkpoint,
    scenario_signature,
    set_rng_states,
    strategy_signature,
)
from fedgmi.federated.evaluation import EvalConfig, evaluate
from fedgmi.federated.server import (
    EvalCallback,
    FederationConfig,
    LoopState,
    RoundCallback,
    StopRequested,
    TrainingDiverged,
    run_federation,
)
from fedgmi.federated.strategy import ProblemSpec, Strategy
from fedgmi.outputs import (
    RunDirectory,
    check_claimable,
    check_writable_dir,
    claim_run_dir,
    create_unique_dir,
    default_output_dir,
    holds_run,
    path_error,
    print_component_table,
    print_summary,
    timestamp,
)
from fedgmi.report import write_plots
from fedgmi.run_folder import is_training_run, release
from fedgmi.selection import SelectionConfig, check_selectable, print_selection, run_selection
from fedgmi.tracking import LoggingConfig
from fedgmi.validation import MAX_SEED, check_choice, check_int

ALGORITHMS = ("FedGMI", "FedAvg", "Local", "IFCA", "FedSoft", "FedEM", "FedGMM", "FedGenGMM", "Oracle", "PFedGM",
              "FedVTC")
"""Class names ``--algorithm`` takes (each a Strategy imported above)."""

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "64-true")
ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps")
MAX_DEFAULT_THREADS = 4
MAX_PROCESSES = 65_536
"""The most devices, nodes or threads a config may ask for (torch's counts are C ints)."""
"""Torch threads per process when neither ``fabric.threads`` nor ``OMP_NUM_THREADS`` says: the
models here are small, and more threads than that mostly spin (and starve parallel runs)."""


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass
class FabricConfig:
    """Devices, precision and CPU threads, passed to ``lightning.Fabric``.

    Attributes:
        accelerator: "cpu", "cuda", "gpu", "mps" or "auto"; it must be present on the machine.
        devices: Processes (devices) per node; with more than one in all, each rank simulates
            its share of every round's clients (:mod:`fedgmi.federated.distributed`), with
            Fabric's "ddp" strategy for the launch and the collectives (gloo on CPU).
        num_nodes: Nodes (launched by ``torchrun`` or ``fabric run``, see the README).
        precision: One of 32-true, bf16-mixed, 16-mixed, 64-true.
        threads: Torch CPU threads per process (``torch.set_num_threads``). ``None``: the
            environment's ``OMP_NUM_THREADS`` when set, else the cores available divided by
            the processes per node, at most 4. Give 1 when several runs share a machine.
    """

    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    precision: str = "32-true"
    threads: int | None = None

    def __post_init__(self) -> None:
        check_choice("fabric.accelerator", self.accelerator, ACCELERATORS)
        check_choice("fabric.precision", self.precision, PRECISIONS)
        check_int("fabric.devices", self.devices, 1, MAX_PROCESSES)
        check_int("fabric.num_nodes", self.num_nodes, 1, MAX_PROCESSES)
        if self.threads is not None:
            check_int("fabric.threads", self.threads, 1, MAX_PROCESSES)

    def num_threads(self) -> int:
        """The torch threads this process uses (see ``threads``)."""
        if self.threads is not None:
            return self.threads
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        if env.isdigit() and int(env) >= 1:
            return int(env)
        return max(1, min(MAX_DEFAULT_THREADS, available_cpus() // self.devices))

    def check_available(self) -> None:
        """Raise ConfigError (one line) when the accelerator, the device count or the precision
        cannot run here (builds a Fabric without launching anything)."""
        from lightning.fabric.accelerators import CUDAAccelerator, MPSAccelerator

        present = ["cpu"] + (["cuda"] if CUDAAccelerator.is_available() else []) + (
            ["mps"] if MPSAccelerator.is_available() else [])
        wanted = {"gpu": "cuda" if "cuda" in present else "mps"}.get(self.accelerator, self.accelerator)
        if wanted not in ("auto", *present):
            raise ConfigError(f"fabric.accelerator = {self.accelerator!r} is not available on this machine; "
                              f"choose one of: auto, {', '.join(present)}")
        if self.precision == "16-mixed" and (wanted == "cpu" or (wanted == "auto" and present == ["cpu"])):
            raise ConfigError("fabric.precision = '16-mixed' needs a GPU (float16 AMP does not run on CPU); "
                              "on CPU choose 32-true or bf16-mixed")
        if wanted == "cuda" and self.devices > CUDAAccelerator.auto_device_count():
            raise ConfigError(f"fabric.devices = {self.devices} but this machine has "
                              f"{CUDAAccelerator.auto_device_count()} CUDA device(s)")
        try:
            self._fabric(loggers=None)
        except Exception as err:  # noqa: BLE001 - Fabric's own check of the combination
            raise ConfigError(f"fabric = {asdict(self)} cannot run here: {one_line(str(err))}") from None

    def _fabric(self, loggers) -> lightning.Fabric:
        several = self.devices * self.num_nodes > 1
        return lightning.Fabric(accelerator=self.accelerator, devices=self.devices, num_nodes=self.num_nodes,
                                strategy="ddp" if several else "auto", precision=self.precision,
                                loggers=loggers)

    def build(self, loggers) -> lightning.Fabric:
        """The launched Fabric (several processes: strategy "ddp"), with this process's torch
        threads set. Under ``fabric run`` (which sets LT_CLI_USED=1) the processes exist
        already and Fabric joins them itself."""
        fabric = self._fabric(loggers)
        if not int(os.environ.get("LT_CLI_USED", "0")):
            fabric.launch()
        torch.set_num_threads(self.num_threads())
        return fabric


SECTIONS = {"scenario": ScenarioConfig, "federation": FederationConfig, "evaluation": EvalConfig,
            "fabric": FabricConfig, "channel": Channel, "logging": LoggingConfig}
"""The config sections built from a class (dataclass or plain), by key."""

SAVED_CONFIG_RESET = {"output_dir": None, "ckpt_path": None, "overwrite": False}
"""Left out of a run's saved config.yaml: it runs again into a new folder, from scratch."""


def _run_parser(description: str, ckpt_help: str | None, overwrite: bool = False) -> ArgumentParser:
    """Arguments shared by ``fit``, ``test`` and ``validate``; ``--ckpt_path`` when
    ``ckpt_help`` is given, ``--overwrite`` when asked."""
    parser = ArgumentParser(description=description, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help=f"seed of the run (training and evaluation), 0..{MAX_SEED}")
    parser.add_argument("--output_dir", type=str | None, default=None,
                        help="run directory (default runs/<dataset>-<algorithm>-<time>, unique; when resuming, "
                             "the checkpoint's run directory; for test, a new test-<time> folder in it)")
    if ckpt_help:
        parser.add_argument("--ckpt_path", type=str | None, default=None, help=ckpt_help)
    if overwrite:
        parser.add_argument("--overwrite", action=ActionYesNo, default=False,
                            help="replace the run that --output_dir holds (its files are deleted first)")
    for key, cls in SECTIONS.items():  # channel: codecs, partial upload, byte budget
        parser.add_class_arguments(cls, key)
    parser.add_subclass_arguments(Strategy, "algorithm", default=lazy_instance(FedGMI), required=False)
    return parser


def build_parser() -> ArgumentParser:
    """The ``fedgmi`` parser with its ``fit``, ``test`` and ``validate`` subcommands."""
    parser = ArgumentParser(prog="fedgmi", description="Federated learning under probabilistic mixtures.",
                            exit_on_error=False)
    parser.add_argument("--version", action="version", version=f"fedgmi {fedgmi.__version__}")
    subcommands = parser.add_subcommands(dest="subcommand")
    subcommands.add_subcommand("fit", _run_parser(
        "Train and evaluate a federated mixture.",
        "resume from this checkpoint (its run directory, round, client and random state)", overwrite=True))
    subcommands.add_subcommand("test", _run_parser(
        "Evaluate a finished run's checkpoint (no training) into a new test-<time> folder of the run.",
        "checkpoint written by fit (required)", overwrite=True))
    subcommands.add_subcommand("validate", _run_parser(
        "Check a config (every field, the data files, the checkpoint, the output folder) without "
        "running or writing anything.",
        "a checkpoint to check too", overwrite=True))
    select = _run_parser("Choose K: train K = 1..selection.k_max components on the clients' fit parts and "
                         "score each on their validation parts (fedgmi.selection).", None)
    select.add_class_arguments(SelectionConfig, "selection")
    subcommands.add_subcommand("select_k", select)
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


def _run_dir_of(ckpt_path: str | None) -> Path | None:
    """The run folder a checkpoint lies in (``<run>/checkpoints/x.ckpt``), if it does."""
    if not ckpt_path:
        return None
    ckpt = Path(ckpt_path)
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None


def _same_path(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def instantiate(parser: ArgumentParser, cfg: Namespace) -> tuple[Namespace, object, dict | None]:
    """Validate everything before any work: config objects (every section, the algorithm and
    its component, head and optimizer, built once on the CPU), the accelerator, the output
    folder, the scenario (data files) and the checkpoint, if one is given, against the
    scenario. Raises ConfigError (one line naming the full key) on the first bad input.
    Writes nothing."""
    sub_parser = parser._subcommands_action._name_parser_map[cfg.subcommand]
    sub_cfg = cfg[cfg.subcommand]
    check_int("seed", sub_cfg.seed, 0, MAX_SEED)
    check_optimizers(sub_cfg)  # before the algorithm builds them: the message names the full key
    try:
        objs = sub_parser.instantiate(sub_cfg)
    except (TypeError, ValueError) as err:  # a component's own check, e.g. a bad init_args value
        raise config_error(err, sub_cfg, SECTIONS) from None
    objs.fabric.check_available()
    _check_output(cfg.subcommand, sub_cfg)
    checkpoint = load_checkpoint(sub_cfg.ckpt_path) if sub_cfg.get("ckpt_path") else None
    if checkpoint and checkpoint["loop"]["next_round"] > objs.federation.rounds:
        raise ConfigError(f"checkpoint {sub_cfg.ckpt_path!r} is at round {checkpoint['loop']['next_round']}, "
                          f"past federation.rounds = {objs.federation.rounds}")
    if checkpoint and cfg.subcommand == "fit" and checkpoint["loop"]["next_round"] == objs.federation.rounds:
        raise ConfigError(f"nothing to do: checkpoint {sub_cfg.ckpt_path!r} is at federation.rounds = "
                          f"{objs.federation.rounds} already (raise federation.rounds to train on)")
    if objs.scenario.seed is None:  # scenario.seed: null follows the run's seed
        objs.scenario.seed = sub_cfg.seed
        sub_cfg.scenario.seed = sub_cfg.seed
    scenario_cfg = objs.scenario
    if cfg.subcommand == "validate" and scenario_cfg.download:  # validate neither downloads nor creates
        scenario_cfg = copy.copy(scenario_cfg)
        scenario_cfg.download = False
    try:
        scenario = build_scenario(scenario_cfg)
    except ConfigError as err:
        if cfg.subcommand == "validate" and objs.scenario.download and "data folder" in str(err):
            from fedgmi.data.datasets import resolve_data_dir
            raise ConfigError(f"scenario.data_dir: no {objs.scenario.dataset} under {str(resolve_data_dir(objs.scenario.data_dir))!r} "
                              "(validate neither downloads nor creates folders; fit downloads it there with "
                              "scenario.download = true, or set FEDGMI_DATA_DIR to a folder holding MNIST/raw)") from None
        raise config_error(err, sub_cfg, SECTIONS, "scenario") from None
    objs.federation.clients_per_round(len(scenario.clients))
    if checkpoint is not None:
        check_scenario(sub_cfg.ckpt_path, checkpoint.get("scenario"),
                       scenario_signature(scenario, sub_cfg.seed, objs.federation.unseen_fraction))
    spec = ProblemSpec.of(scenario, objs.algorithm)
    try:  # builds the components, heads and optimizer factories' inputs once, on the CPU
        copy.deepcopy(objs.algorithm).setup(spec, _cpu_fabric(), sub_cfg.seed)
    except (TypeError, ValueError) as err:
        raise config_error(err, sub_cfg, SECTIONS) from None
    warn_unread_fields(sub_cfg)
    return objs, scenario, checkpoint


def _cpu_fabric() -> lightning.Fabric:
    """A one-process CPU Fabric for the checks, also under ``fabric run`` (whose LT_* settings
    would otherwise apply to it, and conflict)."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("LT_")}
    try:
        return lightning.Fabric(accelerator="cpu", devices=1)
    finally:
        os.environ.update(saved)


def _check_output(subcommand: str, sub_cfg: Namespace) -> None:
    """The output folder can be created and written; ``fit`` refuses one that holds a run
    (unless resuming it or ``--overwrite``; checked by rank 0 alone, since the other ranks of a
    launch start while rank 0 writes the folder). Creates nothing."""
    ckpt_run = _run_dir_of(sub_cfg.get("ckpt_path"))
    if sub_cfg.output_dir:
        path = Path(sub_cfg.output_dir)
        check_writable_dir("output_dir", path)
        resuming_here = subcommand == "fit" and ckpt_run is not None and path.exists() and \
            _same_path(path, ckpt_run)
        if subcommand == "validate" or _env_rank() != 0 or (subcommand == "test" and is_training_run(path)):
            return
        if subcommand == "select_k" and holds_run(path):
            raise ConfigError(f"output_dir = {str(path)!r} already holds a run; give a new --output_dir")
        check_claimable("output_dir", path, bool(sub_cfg.get("overwrite")), resume=resuming_here)
    elif subcommand == "test" and ckpt_run is not None:
        check_writable_dir("output_dir", ckpt_run)
    elif not (subcommand == "fit" and ckpt_run is not None):
        check_writable_dir("output_dir", Path("runs"))


def _env_rank() -> int:
    """This process's global rank as the launchers announce it (0 before any launch)."""
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        value = os.environ.get(name, "0").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 0


def _run_path(subcommand: str, sub_cfg: Namespace, objs: Namespace) -> Path:
    """The run folder, created (atomically, rank 0 only): ``--output_dir`` (refused if it holds
    another run, unless ``--overwrite``); else, resuming, the checkpoint's run folder; else, for
    test, a new ``test-<time>`` folder in the checkpoint's run; else a new unique
    ``runs/<dataset>-<algorithm>-<time>``."""
    create = _env_rank() == 0
    ckpt_run = _run_dir_of(sub_cfg.get("ckpt_path"))
    name = f"{objs.scenario.dataset}-{type(objs.algorithm).__name__.lower()}"
    target = None
    if sub_cfg.output_dir:
        path = Path(sub_cfg.output_dir)
        if subcommand == "fit" and ckpt_run is not None and path.exists() and _same_path(path, ckpt_run):
            return claim_run_dir("output_dir", path, False, resume=True) if create else path
        if not (subcommand == "test" and is_training_run(path)):  # test never writes a fit's own files
            return claim_run_dir("output_dir", path, bool(sub_cfg.get("overwrite"))) if create else path
        target = path / f"test-{timestamp()}"
    elif subcommand == "fit" and ckpt_run is not None:
        return claim_run_dir("output_dir", ckpt_run, False, resume=True) if create else ckpt_run
    elif subcommand == "test":
        target = (ckpt_run / f"test-{timestamp()}") if ckpt_run is not None else default_output_dir(name + "-test")
    target = target or default_output_dir(name)
    if not create:
        return target
    try:
        created = create_unique_dir(target)
    except OSError as err:
        raise ConfigError(path_error("output_dir", target, err)) from None
    return claim_run_dir("output_dir", created, False, nested=subcommand == "test")


def prepare(parser: ArgumentParser, cfg: Namespace, checked: tuple | None = None) -> Prepared:
    """Config -> scenario, strategy (set up, restored from the checkpoint if any), Fabric and run
    directory (created once every input checked; config.yaml written once everything matched).
    ``checked``: what :func:`instantiate` returned, when the caller ran it already."""
    objs, scenario, checkpoint = checked or instantiate(parser, cfg)
    sub_parser = parser._subcommands_action._name_parser_map[cfg.subcommand]
    sub_cfg = cfg[cfg.subcommand]
    path = _run_path(cfg.subcommand, sub_cfg, objs)
    resuming = cfg.subcommand == "fit" and checkpoint is not None
    wandb_id = checkpoint.get("wandb_id") if resuming else None
    loggers, notes = tracking.build_loggers(objs.logging, path, path.name, wandb_id)
    for note in notes:
        print(f"fedgmi: {note}", file=sys.stderr)
    fabric = objs.fabric.build(loggers)
    run = RunDirectory(fabric.broadcast(str(path), src=0))  # the same folder on every rank
    lightning.seed_everything(sub_cfg.seed, verbose=False)
    train_ids, unseen_ids = objs.federation.split_clients(len(scenario.clients))
    spec = ProblemSpec.of(scenario, objs.algorithm, sum(len(scenario.clients[c].x_train) for c in train_ids))
    objs.algorithm.setup(spec, fabric, sub_cfg.seed)
    if checkpoint is not None:
        signature = strategy_signature(objs.algorithm.name, objs.algorithm.global_state)
        check_signature(sub_cfg.ckpt_path, checkpoint["signature"], signature)
        objs.algorithm.load_state_dict(checkpoint["strategy"])
    saved = sub_cfg.clone()
    for key, value in SAVED_CONFIG_RESET.items():
        if key in saved and (cfg.subcommand == "fit" or key != "ckpt_path"):
            saved[key] = value
    config_text = sub_parser.dump(saved)
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
    tracking.finish(p.fabric, write_plots(p.run.path, p.strategy, p.scenario, result, seed=p.objs.seed,
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
            "scenario": scenario_signature(p.scenario, p.objs.seed, p.objs.federation.unseen_fraction)}


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
        console.print(p.scenario.summary())
    return loop


def loop_callbacks(p: Prepared) -> tuple[dict, EvalCallback, RoundCallback]:
    """``(last, on_eval, on_round_end)`` of a fit: rank 0 writes each evaluation's rows, tables
    and logs (``last["row"]`` keeps the newest row) and the round checkpoints."""
    fed, last = p.objs.federation, {"row": {}}

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

    return last, on_eval, on_round_end


def fit(parser: ArgumentParser, cfg: Namespace, console: Console) -> dict:
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
        return row
    return finish(p, row, result, loop.elapsed_s, console)


def test(parser: ArgumentParser, cfg: Namespace, console: Console) -> dict:
    """Evaluate a checkpoint with the run's config into a new folder (``test-<time>`` in the
    run, or ``--output_dir``): its own config, metrics, tables, plots and logs. The run's
    training files are left as they were."""
    started = time.perf_counter()
    if not cfg.test.ckpt_path:
        raise ConfigError("ckpt_path: test needs --ckpt_path, a checkpoint written by fedgmi fit")
    p = prepare(parser, cfg)
    result = evaluate(p.strategy, p.scenario, p.objs.evaluation, cfg.test.seed, p.unseen)
    row = {"round": int(p.checkpoint["round"]), **result.metrics}
    p.run.append_metrics(row)
    tracking.log_metrics(p.fabric, row)
    write_evaluation(p, result, row)
    return finish(p, row, result, time.perf_counter() - started, console)


def validate(parser: ArgumentParser, cfg: Namespace, console: Console) -> dict:
    """Check the config, its data files, the output folder and the checkpoint; run and write
    nothing (no folder, no download)."""
    objs, scenario, checkpoint = instantiate(parser, cfg)
    console.print(f"config OK: {type(objs.algorithm).__name__}, {len(scenario.clients)} clients, "
                  f"K = {scenario.num_components}, {objs.federation.rounds} rounds"
                  + (f"; checkpoint at round {checkpoint['round']}" if checkpoint else ""))
    return {}


def select_k(parser: ArgumentParser, cfg: Namespace, console: Console) -> dict:
    """Choose K (:mod:`fedgmi.selection`): one run folder with a ``k<K>/`` folder per K (its
    config.yaml, runnable by ``fedgmi fit``, per-round metrics.csv, per-client held_out.csv),
    selection.json, selection.csv and selection.png."""
    checked = instantiate(parser, cfg)
    check_selectable(checked[0].algorithm)  # before any folder is created
    p = prepare(parser, cfg, checked)
    sub_cfg, fit_parser = cfg.select_k, parser._subcommands_action._name_parser_map["fit"]
    select_parser = parser._subcommands_action._name_parser_map["select_k"]

    def make_run(k: int, folder: Path) -> tuple[Strategy, Channel]:
        k_cfg = sub_cfg.clone()
        k_cfg.algorithm.init_args.num_components = k
        objs = select_parser.instantiate(k_cfg)
        if p.fabric.is_global_zero:
            folder.mkdir()  # inside a run folder made new for this selection: never overwrites
            fit_cfg = k_cfg.clone()  # what `fedgmi fit` runs (on the full training parts), into a new folder
            del fit_cfg["selection"]
            fit_cfg.update(Namespace(SAVED_CONFIG_RESET))
            write_atomic(folder / "config.yaml", fit_parser.dump(fit_cfg))
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
def stop_on_signals(console: Console, resume: str = "", checkpoint: Path | None = None):
    """While inside, SIGTERM and SIGINT ask the loop to stop after the current round (it writes
    a checkpoint first); a second signal stops the process at once, with one line on stderr
    (the resume command, or that no checkpoint exists yet) and exit status 128 + signal.
    Yields the list of signals received."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame) -> None:
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


COMMANDS = {"fit": fit, "test": test, "validate": validate, "select_k": select_k}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedgmi`` console script; returns the exit status."""
    console = Console()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        check_config_files(argv)
        parser = build_parser()
        cfg = parser.parse_args(argv)
        COMMANDS[cfg.subcommand](parser, cfg, console)
        return 0
    except ConfigError as err:
        print(f"fedgmi: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except Stopped as err:
        print(f"fedgmi: {err}", file=sys.stderr)
        return err.status
    except KeyboardInterrupt:
        print("fedgmi: SIGINT: stopped outside the training loop (what was written so far stays)", file=sys.stderr)
        return 128 + signal.SIGINT
    except Exception as err:  # jsonargparse's ArgumentError and friends
        if type(err).__name__ != "ArgumentError":
            raise
        print(f"fedgmi: error: {summarize_parser_error(str(err), ALGORITHMS)}", file=sys.stderr)
        return 2
    finally:
        release()  # this process's run folders: unlocked (the process may go on, e.g. in tests)


if __name__ == "__main__":
    sys.exit(main())
