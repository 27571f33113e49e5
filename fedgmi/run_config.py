"""The run configuration: the ``fedgmi`` parser (jsonargparse, LightningCLI's conventions), its
sections, the Fabric settings, the checks of every input before any work (:func:`instantiate`)
and where a run's folder goes. Used by the CLI (:mod:`fedgmi.cli`), the run layer
(:mod:`fedgmi.run`) and the Flower apps.
"""

from __future__ import annotations

import copy
import os
import re
import sys
import warnings
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import lightning
import torch
from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser, Namespace, lazy_instance
from lightning.fabric.loggers import Logger

import fedgmi
import fedgmi.algorithms
from fedgmi.algorithms.gmi import FedGMI
from fedgmi.config_checks import (
    check_optimizers,
    config_error,
    import_class,
    one_line,
    warn_unread_fields,
)
from fedgmi.data import Scenario, ScenarioConfig, build_scenario
from fedgmi.errors import ConfigError
from fedgmi.federated.channel import Channel
from fedgmi.federated.checkpoint import check_scenario, load_checkpoint, scenario_signature
from fedgmi.federated.contract import check_strategy_class
from fedgmi.federated.evaluation import EvalConfig
from fedgmi.federated.server import FederationConfig
from fedgmi.federated.strategy import ProblemSpec, Strategy
from fedgmi.outputs import (
    check_claimable,
    check_writable_dir,
    claim_run_dir,
    create_unique_dir,
    default_output_dir,
    holds_run,
    path_error,
    timestamp,
)
from fedgmi.run_folder import is_training_run
from fedgmi.selection import SelectionConfig
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

    def _fabric(self, loggers: Logger | list[Logger] | None) -> lightning.Fabric:
        several = self.devices * self.num_nodes > 1
        return lightning.Fabric(accelerator=self.accelerator, devices=self.devices, num_nodes=self.num_nodes,
                                strategy="ddp" if several else "auto", precision=cast(Any, self.precision),
                                loggers=loggers)

    def build(self, loggers: Logger | list[Logger] | None) -> lightning.Fabric:
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

NOTES: weakref.WeakKeyDictionary[ArgumentParser, list[str]] = weakref.WeakKeyDictionary()
"""Notes on a parsed config (an --algorithm switch's dropped options), by parser: printed to
stderr by :func:`instantiate` once every input is accepted."""

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


def _run_dir_of(ckpt_path: str | None) -> Path | None:
    """The run folder a checkpoint lies in (``<run>/checkpoints/x.ckpt``), if it does."""
    if not ckpt_path:
        return None
    ckpt = Path(ckpt_path)
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None


def _same_path(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def instantiate(parser: ArgumentParser, cfg: Namespace, data: bool = True) -> tuple[Namespace, Scenario | None, dict | None]:
    """Validate everything before any work: config objects (every section, the algorithm and
    its component, head and optimizer, built once on the CPU), the accelerator, the output
    folder, the scenario (data files) and the checkpoint, if one is given, against the
    scenario. Raises ConfigError (one line naming the full key) on the first bad input.
    Writes nothing. With ``data=False`` (a Flower server, a node with its own data file) no
    scenario is built and no data file is read: the scenario returned is ``None``."""
    sub_parser = subcommand_parser(parser, cfg.subcommand)
    sub_cfg = cfg[cfg.subcommand]
    check_int("seed", sub_cfg.seed, 0, MAX_SEED)
    check_optimizers(sub_cfg)  # before the algorithm builds them: the message names the full key
    algorithm = sub_cfg.get("algorithm")
    cls = import_class(algorithm.class_path) if isinstance(algorithm, Namespace) and \
        isinstance(algorithm.get("class_path"), str) else None
    if cls is not None:
        check_strategy_class(cls)  # every required hook, before any work
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
    if not data:
        objs.federation.clients_per_round(objs.scenario.num_clients)
        warn_unread_fields(sub_cfg)
        return objs, None, checkpoint
    scenario_cfg = objs.scenario
    if cfg.subcommand == "validate" and scenario_cfg.download:  # validate neither downloads nor creates
        scenario_cfg = copy.copy(scenario_cfg)
        scenario_cfg.download = False
    try:
        scenario = build_scenario(scenario_cfg)
    except ConfigError as err:
        if cfg.subcommand == "validate" and objs.scenario.download and "data folder" in str(err):
            from fedgmi.data.datasets import resolve_data_dir
            raise ConfigError(f"scenario.data_dir: no {objs.scenario.dataset_name} under {str(resolve_data_dir(objs.scenario.data_dir))!r} "
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
    for note in NOTES.pop(parser, []):  # once every input is accepted: a refusal stays one line
        print(f"fedgmi: {note}", file=sys.stderr)
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


def run_path(subcommand: str, sub_cfg: Namespace, objs: Namespace) -> Path:
    """The run folder, created (atomically) and claimed (locked, with a fresh manifest; rank 0
    only, see :func:`fedgmi.outputs.claim_run_dir`): ``--output_dir`` (refused if it holds
    another run, unless ``--overwrite``; for test, a folder holding a training run gets a new
    ``test-<time>`` folder in it); else, resuming, the checkpoint's run folder; else, for test,
    a new ``test-<time>`` folder in the checkpoint's run; else a new unique
    ``runs/<dataset>-<algorithm>-<time>``."""
    create = _env_rank() == 0
    ckpt_run = _run_dir_of(sub_cfg.get("ckpt_path"))
    name = f"{objs.scenario.dataset_name}-{type(objs.algorithm).__name__.lower()}"
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


UNSERIALIZABLE_NONE = "Unable to serialize instance None"
"""What jsonargparse writes for a ``null`` in a list of callables (``Transformed``'s identity
transform): its Callable serializer claims the value before the union's None does."""


def dump_config(parser: ArgumentParser, cfg: Namespace) -> str:
    """``cfg`` as YAML that ``parser`` reads back (a run's ``config.yaml``): jsonargparse's dump,
    with a ``null`` in a list of callables written as ``null``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=rf"\s*{UNSERIALIZABLE_NONE}")
        text = parser.dump(cfg)
    return re.sub(rf"^(\s*(?:- |[\w.]+: ))(?:'{UNSERIALIZABLE_NONE}'|{UNSERIALIZABLE_NONE})$", r"\1null", text,
                  flags=re.MULTILINE)


def saved_config(parser: ArgumentParser, cfg: Namespace) -> str:
    """The ``config.yaml`` a run writes: its parsed config (``cfg``, as :func:`build_parser`'s
    ``parser`` parsed it), without what :data:`SAVED_CONFIG_RESET` resets (``fit``: a new run
    from scratch; ``test`` keeps its checkpoint), readable by ``fedgmi validate`` and ``fit``."""
    saved = cfg[cfg.subcommand].clone()
    for key, value in SAVED_CONFIG_RESET.items():
        if key in saved and (cfg.subcommand == "fit" or key != "ckpt_path"):
            saved[key] = value
    return dump_config(subcommand_parser(parser, cfg.subcommand), saved)


def subcommand_parser(parser: ArgumentParser, name: str) -> ArgumentParser:
    """The parser of subcommand ``name`` of :func:`build_parser`'s ``parser``."""
    action = parser._subcommands_action
    assert action is not None, "a parser built by build_parser has subcommands"
    return action._name_parser_map[name]
