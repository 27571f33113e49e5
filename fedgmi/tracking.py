"""Experiment tracking: the loggers handed to Fabric, and the stable metric keys.

CSV is always on (``<run>/logs/metrics.csv``); Weights & Biases (the Fabric logger shipped in
the ``wandb`` package) and TensorBoard are optional. Logged keys carry a prefix by kind:
``train/`` (local training), ``eval/`` (evaluation), ``comm/`` (bytes), ``time/`` (seconds),
``fed/`` (failed and rejected clients, skipped rounds);
``metrics.csv`` and ``metrics.json`` in the run directory keep the bare keys.

Resuming is seamless in every logger: the CSV logger writes each row to disk as it is logged
(so a kill loses nothing) and, on resume, keeps the rows up to the checkpoint's round and
appends after them (Fabric's own CSV writer deletes an existing file); W&B rows are logged with
``step = round``, so a row that a resumed run logs again lands on the step it already has.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import netrc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning
from lightning.fabric.loggers import CSVLogger, Logger
from lightning.fabric.loggers.csv_logs import _ExperimentWriter

from fedgmi.atomic import write_atomic
from fedgmi.errors import ConfigError
from fedgmi.outputs import truncate_csv
from fedgmi.run_folder import record

WANDB_MODES = ("online", "offline", "disabled")


@dataclass
class LoggingConfig:
    """Which loggers a run uses.

    Attributes:
        wandb: Log to Weights & Biases too.
        wandb_project: W&B project name.
        wandb_mode: "online", "offline" or "disabled"; ``None`` follows ``WANDB_MODE``, and
            without it logs online when a W&B login exists, else offline (and says so).
        tensorboard: Log to TensorBoard too (needs the ``tensorboard`` package).
    """

    wandb: bool = False
    wandb_project: str = "fedgmi"
    wandb_mode: str | None = None
    tensorboard: bool = False

    def __post_init__(self) -> None:
        if self.wandb_mode is not None and self.wandb_mode not in WANDB_MODES:
            raise ConfigError(f"logging.wandb_mode = {self.wandb_mode!r}; choose one of: {', '.join(WANDB_MODES)}")
        for key, package in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
            if getattr(self, key) is True and not (_installed(package) or key == "tensorboard" and
                                                   _installed("tensorboardX")):
                raise ConfigError(f"logging.{key} = true needs the package {package!r}, which is not installed: "
                                  f"pip install {package} (or set logging.{key} false)")


def _installed(package: str) -> bool:
    """Whether ``package`` can be imported (looked up, not imported)."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def metric_key(key: str) -> str:
    """The logged name of a bare metric key: train/..., comm/..., time/... or eval/..."""
    if key.startswith("train_"):
        return "train/" + key[len("train_"):]
    if key.startswith(("bytes_", "compression_ratio_", "budget_")) or key == "components_sent_per_client":
        return "comm/" + key
    if key.startswith(("clients_", "rounds_")):
        return "fed/" + key
    if key.endswith("_s"):
        return "time/" + key
    return "eval/" + key


def wandb_mode(config: LoggingConfig) -> tuple[str, str | None]:
    """(mode, note): the W&B mode to use and, when it fell back to offline, why."""
    if config.wandb_mode is not None:
        return config.wandb_mode, None
    env = os.environ.get("WANDB_MODE", "").strip()
    if env:
        return ("offline" if env == "dryrun" else env), None
    if os.environ.get("WANDB_API_KEY") or _netrc_has_wandb():
        return "online", None
    return "offline", "no W&B login found: logging offline; upload later with `wandb sync`"


def _netrc_has_wandb() -> bool:
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class _AppendingWriter(_ExperimentWriter):
    """Fabric's CSV writer, except that an existing ``metrics.csv`` is continued (its header
    kept) instead of deleted, and each save rewrites the file whole through a temporary file
    and a rename (a full disk leaves the rows saved before, never half a row)."""

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                header = f.readline().strip()
            self.metrics_keys = header.split(",") if header else []

    def save(self) -> None:
        if not self.metrics:
            return
        self._record_new_keys()
        rows = []
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                rows = list(csv.DictReader(f))
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=self.metrics_keys)
        writer.writeheader()
        writer.writerows([*rows, *self.metrics])
        write_atomic(self.metrics_file_path, buffer.getvalue())
        self.metrics = []


class RunCSVLogger(CSVLogger):
    """``<run>/logs/metrics.csv``: every row is on disk once logged (a kill loses none), and a
    resumed run appends to the rows kept by :func:`truncate_csv_log`."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir, name="logs", version="", flush_logs_every_n_steps=1)

    @property
    def experiment(self) -> _ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics, step)
        self.save()  # on disk now, whatever the step


def csv_log_path(run_dir: Path) -> Path:
    """Where :class:`RunCSVLogger` writes."""
    return Path(run_dir) / "logs" / "metrics.csv"


def truncate_csv_log(run_dir: Path, rounds_done: int) -> None:
    """Resuming after ``rounds_done`` rounds: keep the logged rows of those rounds only."""
    truncate_csv(csv_log_path(run_dir), "step", rounds_done)


def build_loggers(config: LoggingConfig, run_dir: Path, run_name: str,
                  wandb_id: str | None = None) -> tuple[list[Logger], list[str]]:
    """The loggers for ``lightning.Fabric(loggers=...)`` and notes to print.

    ``wandb_id``: a W&B run id to continue (a resumed run logs into its original W&B run).

    Raises:
        ConfigError: TensorBoard asked for without the ``tensorboard`` package.
    """
    loggers: list[Logger] = [RunCSVLogger(run_dir)]
    notes: list[str] = []
    if config.tensorboard:
        try:
            from lightning.fabric.loggers import TensorBoardLogger
            loggers.append(TensorBoardLogger(run_dir, name="tensorboard", version=""))
            record(Path(run_dir) / "tensorboard", "tree")
        except ModuleNotFoundError:
            raise ConfigError("logging.tensorboard = true needs the package 'tensorboard', which is not installed: "
                              "pip install tensorboard (or set logging.tensorboard false)") from None
    if config.wandb:
        mode, note = wandb_mode(config)
        if note:
            notes.append(note)
        if mode != "disabled":
            try:
                from wandb.integration.lightning.fabric import WandbLogger
            except ModuleNotFoundError:
                raise ConfigError("logging.wandb = true needs the package 'wandb', which is not installed: "
                                  "pip install wandb (or set logging.wandb false)") from None
            resume = {"id": wandb_id, "resume": "allow"} if wandb_id else {}
            loggers.append(WandbLogger(project=config.wandb_project, name=run_name, save_dir=str(run_dir),
                                       offline=mode == "offline", mode=mode, **resume))
            record(Path(run_dir) / "wandb", "tree")
    return loggers, notes


def wandb_run_id(fabric: lightning.Fabric) -> str | None:
    """The id of the run's W&B run, if it logs to W&B (kept in checkpoints for resuming)."""
    for logger in fabric.loggers:
        if type(logger).__name__ == "WandbLogger":
            return str(logger.experiment.id)
    return None


def log_hyperparams(fabric: lightning.Fabric, config: dict[str, Any]) -> None:
    """Log the resolved configuration once, to every logger that takes hyperparameters (the
    CSV logger does not; the run directory's config.yaml holds it)."""
    for logger in fabric.loggers:
        if not isinstance(logger, CSVLogger):
            logger.log_hyperparams(config)


def _is_wandb(logger: Logger) -> bool:
    return type(logger).__name__ == "WandbLogger"


def log_metrics(fabric: lightning.Fabric, row: dict[str, Any]) -> None:
    """Log one evaluation row (bare keys, with ``round``) under the prefixed keys, step = round.

    W&B gets the round as its own step (``wandb.log(..., step=round, commit=True)``, plus
    ``round`` as a key): the row is committed at once (a kill loses none), and a row that a
    resumed run logs again lands on a step W&B already has (it keeps one row per step)
    instead of being appended as a duplicate."""
    metrics = {metric_key(k): float(v) for k, v in row.items() if k != "round" and isinstance(v, (int, float))}
    step = int(row["round"])
    if not fabric.is_global_zero:
        return
    for logger in fabric.loggers:
        if _is_wandb(logger):
            logger.experiment.log({**metrics, "round": step}, step=step, commit=True)  # on disk now
        else:
            logger.log_metrics(metrics, step=step)


def replay_to_wandb(fabric: lightning.Fabric, csv_path: Path) -> int:
    """Resuming: log the rows of ``metrics.csv`` kept up to the checkpoint to W&B again, at
    their rounds. W&B keeps one row per step, so rows it has stay as they are, and rows the
    killed process had not yet written out (W&B's writer buffers; a SIGKILL loses what is
    buffered) come back. Returns the number of rows replayed."""
    loggers = [logger for logger in fabric.loggers if _is_wandb(logger)]
    if not loggers or not fabric.is_global_zero or not Path(csv_path).is_file():
        return 0
    import csv

    with Path(csv_path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    for raw in rows:
        row = {}
        for key, value in raw.items():
            try:
                row[key] = float(value)
            except (TypeError, ValueError):
                continue
        if "round" in row:
            row["round"] = int(row["round"])
            for logger in loggers:
                metrics = {metric_key(k): v for k, v in row.items() if k != "round"}
                logger.experiment.log({**metrics, "round": row["round"]}, step=row["round"], commit=True)
    return len(rows)


def finish(fabric: lightning.Fabric, images: dict[str, Path] | None = None) -> None:
    """Send the run's plots to the loggers that take images, then flush and close them all."""
    for logger in fabric.loggers:
        if images and hasattr(logger, "log_image"):
            for key, path in images.items():
                logger.log_image(key=f"plots/{key}", images=[str(path)])
        logger.finalize("success")
        experiment = getattr(logger, "_experiment", None)
        if experiment is not None and hasattr(experiment, "finish"):
            experiment.finish()
