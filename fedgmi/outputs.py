"""The run directory: every output of a run in one folder, written as the run goes.

Layout::

    <output_dir>/
      config.yaml          the resolved configuration (runs again with --config)
      metrics.csv          one row per evaluation (appended and flushed as it happens)
      metrics.json         final values of every metric, plus rounds and wall_time_s
      proportions.csv      client, unseen, component, learned_component, estimated, true
      component_accuracy.csv   head accuracy per (inherent distribution, component), raw and matched
      checkpoints/round-NNNN.ckpt, last.ckpt   every checkpoint_every rounds; last = newest
      logs/metrics.csv     the CSV logger's rows (wandb/, tensorboard/ beside it when on)
      plots/*.png
      test-<time>/         one folder per ``fedgmi test`` of the run: its own config.yaml,
                           metrics, tables, plots and logs (the training files stay as they were)

A run folder belongs to one run: :func:`claim_run_dir` refuses a folder that already holds a
run (unless told to overwrite it), and :func:`create_unique_dir` makes default folder names
unique even for runs started in the same second (the folder is created atomically, with a
numeric suffix on collision).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from fedgmi.errors import ConfigError
from fedgmi.metrics import is_one_to_one, learned_groups, matched_column_names

RUN_FILES = ("config.yaml", "metrics.csv", "metrics.json", "proportions.csv", "component_accuracy.csv",
             "checkpoints", "logs", "plots", "wandb", "tensorboard")
"""What ``fit`` writes into a run folder: a folder holding any of these holds a run, and
``--overwrite`` removes exactly these (and the ``test-*`` folders of ``fedgmi test``)."""


def timestamp() -> str:
    """``YYYYmmdd-HHMMSS`` of now, for folder names."""
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def default_output_dir(name: str, parent: str | Path = "runs") -> Path:
    """``<parent>/<name>-<YYYYmmdd-HHMMSS>`` (``runs`` relative to the working directory). Not
    created here: see :func:`create_unique_dir`."""
    return Path(parent) / f"{name}-{timestamp()}"


def create_unique_dir(path: str | Path) -> Path:
    """Create ``path``, or ``path-2``, ``path-3``, ... when it exists: each attempt is one atomic
    ``mkdir``, so runs started at the same instant never share a folder. Returns the folder.

    Raises:
        OSError: the parent cannot be created or written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = path if n == 1 else path.with_name(f"{path.name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"no free folder name next to {path}")


def holds_run(path: Path) -> bool:
    """Whether ``path`` already holds (part of) a run's outputs."""
    return path.is_dir() and any((path / name).exists() for name in RUN_FILES)


def check_writable_dir(key: str, path: str | Path) -> None:
    """Raise ConfigError (one line naming ``key``) unless ``path`` is a folder that exists and
    is writable, or could be created: its nearest existing ancestor is a writable folder.
    Creates nothing."""
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        if probe.is_symlink():  # a dangling link
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is a file" if probe == path else f"lies under the file {str(probe)!r}"
        raise ConfigError(f"{key} = {str(path)!r} {where}; give a folder that can be created")
    if not probe.exists() or not os.access(probe, os.W_OK | os.X_OK) or _pseudo_filesystem(probe):
        raise ConfigError(f"{key} = {str(path)!r} cannot be created or written "
                          f"({str(probe)!r} is not a writable folder); give another folder")


def _pseudo_filesystem(path: Path) -> bool:
    """/proc and /sys accept no new folders, even from root (os.access says yes there)."""
    resolved = path.resolve()
    return any(resolved == Path(p) or Path(p) in resolved.parents for p in ("/proc", "/sys"))


def claim_run_dir(key: str, path: Path, overwrite: bool) -> Path:
    """Make ``path`` the folder of a new run: created if missing; refused (one line) if it
    already holds a run, unless ``overwrite``, which deletes that run's files (and only those:
    :data:`RUN_FILES` and ``test-*`` folders) first.

    Raises:
        ConfigError: the folder holds a run (and no ``overwrite``), or cannot be created.
    """
    check_writable_dir(key, path)
    if holds_run(path):
        if not overwrite:
            raise ConfigError(f"{key} = {str(path)!r} already holds a run; resume it with --ckpt_path "
                              f"{str(path / 'checkpoints' / 'last.ckpt')!r}, replace it with --overwrite, "
                              "or give a new --output_dir")
        for name in RUN_FILES:
            target = path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
        for sub in path.glob("test-*"):
            if sub.is_dir() and (sub / "config.yaml").exists():
                shutil.rmtree(sub)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{key} = {str(path)!r} cannot be created ({err.strerror or err})") from None
    return path


class RunDirectory:
    """Writes a run's outputs under ``path`` (created if missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._csv_fields: list[str] | None = None

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoints" / "last.ckpt"

    def write_config(self, text: str) -> None:
        (self.path / "config.yaml").write_text(text)

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Append one evaluation row to metrics.csv (the first row fixes the columns)."""
        path = self.path / "metrics.csv"
        if self._csv_fields is None:
            self._csv_fields = list(row)
            with path.open("w", newline="") as f:
                csv.DictWriter(f, self._csv_fields).writeheader()
        with path.open("a", newline="") as f:
            csv.DictWriter(f, self._csv_fields, extrasaction="ignore").writerow(row)

    def truncate_metrics(self, rounds_done: int) -> None:
        """Resuming after ``rounds_done`` rounds: keep the metrics.csv rows of those rounds only
        (later rows were written after the checkpoint and will be written again)."""
        fields = truncate_csv(self.path / "metrics.csv", "round", rounds_done)
        if fields:
            self._csv_fields = fields

    def write_metrics_json(self, metrics: dict[str, Any]) -> None:
        with (self.path / "metrics.json").open("w") as f:
            json.dump(_jsonable(metrics), f, indent=2, sort_keys=True)

    def write_proportions(self, result, true: np.ndarray, names: list[str], unseen: set[int]) -> None:
        """proportions.csv: per client and TRUE component, the matched estimate (summed over the
        learned components mapped to it, ``learned_component`` "j" or "j1+j2", empty when none
        is) and the truth."""
        groups = learned_groups(result.mapping, len(names))
        est = result.proportions_by_true
        with (self.path / "proportions.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["client", "unseen", "component", "learned_component", "estimated", "true"])
            for c in range(true.shape[0]):
                for t, group in enumerate(groups):
                    writer.writerow([c, int(c in unseen), names[t], "+".join(str(int(j)) for j in group),
                                     f"{est[c, t]:.6f}", f"{true[c, t]:.6f}"])

    def write_component_accuracy(self, result, names: list[str]) -> None:
        """component_accuracy.csv: rows (table, distribution), columns c0..cK-1, client_model.

        ``raw`` keeps the learned order; in ``matched``, column c_t is the component matched to
        distribution t, so the diagonal is each component on its own distribution. With a
        many-to-one map (learned K != true K) only ``raw`` is written, its columns named
        ``c{j}>p{t}`` (learned j, mapped to true t)."""
        one_to_one = is_one_to_one(result.mapping)
        columns = [f"c{j}" if one_to_one else f"c{j}>p{t}" for j, t in enumerate(result.mapping)]
        tables = (("raw", result.component_accuracy), ("matched", result.component_accuracy_matched))
        with (self.path / "component_accuracy.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["table", "distribution", *columns, "client_model"])
            for label, table in tables if one_to_one else tables[:1]:
                for t in range(len(names)):
                    writer.writerow([label, names[t], *[f"{v:.4f}" for v in table[t]],
                                     f"{result.client_model_accuracy[t]:.4f}"])


def truncate_csv(path: Path, column: str, last: int) -> list[str] | None:
    """Keep the header and the rows of ``path`` whose ``column`` is at most ``last`` (written
    atomically: temporary file, then rename). Returns the header, or ``None`` without a file."""
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames
        rows = [r for r in reader if r.get(column) not in (None, "") and int(float(r[column])) <= last]
    if not fields:
        return None
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return list(fields)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def format_bytes(value: float) -> str:
    """``1234567 -> "1.23 MB"`` (decimal units: B, kB, MB, GB)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f} {unit}"
    return f"{int(value)} B"


def format_metric(key: str, value: float) -> str:
    """A metric value for the summary: NaN as "n/a", byte counts in kB/MB, seconds with
    one decimal, other floats with 4."""
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if key.startswith("bytes_"):
        return format_bytes(value)
    if key.endswith("_s"):
        return f"{value:.1f} s"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def print_summary(metrics: dict[str, Any], run_dir: Path, console: Console | None = None,
                  algorithm: str | None = None) -> None:
    """A table of the final scalar metrics (titled with the algorithm's name), then where the
    outputs are."""
    table = Table(title=f"fedgmi: final metrics of {algorithm}" if algorithm else "fedgmi: final metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
            table.add_row(key, format_metric(key, value.item() if isinstance(value, np.generic) else value))
    console = console or Console()
    console.print(table)
    console.print(f"outputs: {run_dir}")


def print_component_table(result, names: list[str], console: Console | None = None) -> None:
    """The FedGMI paper's component-by-distribution table (matched): rows are the inherent
    distributions p0..pK-1, columns the components (c0..cK-1 matched; ``c{j}>p{t}`` under a
    many-to-one map) and the client model."""
    table = Table(title="accuracy of each component's classifier on each inherent distribution (matched)")
    table.add_column("distribution")
    for column in matched_column_names(result.mapping):
        table.add_column(column, justify="right")
    table.add_column("client model", justify="right")
    matched = result.component_accuracy_matched
    for t in range(len(names)):
        table.add_row(f"p{t} ({names[t]})", *[f"{v:.3f}" for v in matched[t]],
                      f"{result.client_model_accuracy[t]:.3f}")
    (console or Console()).print(table)
