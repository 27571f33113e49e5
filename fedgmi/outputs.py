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

      .fedgmi/lock, manifest   who writes the run now, and what fedgmi wrote (:mod:`fedgmi.run_folder`)

A run folder belongs to one run: :func:`claim_run_dir` takes the folder's lock (a second run
into the same folder is refused while the first one lives) and refuses a folder that already
holds a run unless told to overwrite it; ``--overwrite`` deletes exactly the files the manifest
records, never the user's own. Every file is written through a temporary name and a rename
(:mod:`fedgmi.atomic`). :func:`create_unique_dir` makes default folder names unique even for
runs started in the same second (the folder is created atomically, with a numeric suffix on
collision).
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from fedgmi import run_folder
from fedgmi.atomic import format_bytes, write_atomic
from fedgmi.errors import ConfigError
from fedgmi.metrics import is_one_to_one, learned_groups, matched_column_names
from fedgmi.run_folder import holds_run

__all__ = ["RunDirectory", "claim_run_dir", "create_unique_dir", "default_output_dir", "format_bytes", "holds_run",
           "print_component_table", "print_summary", "timestamp"]

RUN_OUTPUTS = ("config.yaml", "metrics.csv", "metrics.json", "proportions.csv", "component_accuracy.csv",
               "checkpoints/last.ckpt", "logs/metrics.csv", "selection.json", "selection.csv", "selection.png",
               *(f"plots/{name}.png" for name in ("proportions", "curves", "accuracy_vs_bytes", "component_accuracy",
                                                  "samples", "reconstructions", "mixture")))
"""Files a run writes under fixed names: in a folder whose manifest does not record them (the
user's own files), their presence stops a claim, since the run would replace them."""


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


def check_writable_dir(key: str, path: str | Path) -> None:
    """Raise ConfigError (one line naming ``key``) unless ``path`` is a folder that exists and
    is writable, or could be created: its nearest existing ancestor is a writable folder.
    Creates nothing."""
    path = Path(path)
    try:
        _check_writable_dir(key, path)
    except OSError as err:  # e.g. a name too long for the file system
        raise ConfigError(path_error(key, path, err)) from None


def _check_writable_dir(key: str, path: Path) -> None:
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


def claim_run_dir(key: str, path: Path, overwrite: bool, resume: bool = False, nested: bool = False) -> Path:
    """Make ``path`` the folder of this process's run, created if missing, and lock it (the
    lock lasts until the process ends or :func:`fedgmi.run_folder.release`).

    Refused (one line) when another run holds the lock, when the folder lies inside another
    run's folder, when it holds a run (unless ``overwrite``, which first deletes exactly what
    that run's manifest records, or ``resume``, which continues it), and when it holds files
    under the names a run writes that fedgmi has no record of writing (:data:`RUN_OUTPUTS`).
    ``nested``: a run folder inside another run's (``test-<time>``), recorded in that run's
    manifest so that replacing that run removes it too.

    Raises:
        ConfigError: any of those, or a folder that cannot be created.
    """
    check_claimable(key, path, overwrite, resume, nested)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = run_folder.lock(path)
    except run_folder.FolderInUse as err:
        raise ConfigError(_in_use(key, path, err.pid)) from None
    except OSError as err:
        raise ConfigError(path_error(key, path, err)) from None
    try:
        check_claimable(key, path, overwrite, resume, nested, locked=True)  # again, under the lock
        if overwrite and not resume and holds_run(path):
            run_folder.remove_recorded(path)
        run_folder.start(path, fd, keep=resume)
        outer = run_folder.enclosing_run(path) if nested else None
        if outer is not None:
            run_folder.append(outer, [f"run\t{Path(os.path.abspath(path)).relative_to(outer)}"])
    except BaseException:
        run_folder.release(path, fd)
        raise
    return path


def check_claimable(key: str, path: Path, overwrite: bool, resume: bool = False, nested: bool = False,
                    locked: bool = False) -> None:
    """The read-only part of :func:`claim_run_dir` (no lock taken, nothing written): raise its
    one-line refusals. ``locked``: this process holds the folder's lock (do not probe it)."""
    check_writable_dir(key, path)
    pid = None if locked else run_folder.holder(path)
    if pid is not None:
        raise ConfigError(_in_use(key, path, pid))
    outer = None if nested else run_folder.enclosing_run(path)
    if outer is not None:
        raise ConfigError(f"{key} = {str(path)!r} lies inside the run folder {str(outer)!r}; "
                          "give a folder outside it")
    if resume or not path.is_dir():
        return
    if holds_run(path):
        if overwrite:
            return
        last = path / "checkpoints" / "last.ckpt"
        resume_hint = f"resume it with --ckpt_path {str(last)!r}, " if last.is_file() else ""
        raise ConfigError(f"{key} = {str(path)!r} already holds a run; {resume_hint}replace it with --overwrite, "
                          "or give a new --output_dir")
    found = [name for name in RUN_OUTPUTS if (path / name).exists()]
    if found:
        raise ConfigError(f"{key} = {str(path)!r} holds files a run would replace ({', '.join(found[:4])}) that "
                          "fedgmi has no record of writing (they stay, even with --overwrite); move them or give "
                          "a new --output_dir")


def _in_use(key: str, path: Path, pid: str) -> str:
    return (f"{key} = {str(path)!r} is in use by another fedgmi run (process {pid or '?'}); "
            "wait for it to end or give another --output_dir")


def path_error(key: str, path: Path, err: OSError) -> str:
    """One line for a folder that cannot be made (a name too long for the file system too)."""
    if err.errno == errno.ENAMETOOLONG:
        return (f"{key} = {str(path)[:60]!r}... ({len(str(path))} characters) is a name too long for the file "
                "system; give a shorter path")
    return f"{key} = {str(path)!r} cannot be created ({err.strerror or err})"


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
        write_atomic(self.path / "config.yaml", text)

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Add one evaluation row to metrics.csv (the first row fixes the columns); the file is
        rewritten whole through a temporary file, so it always ends with a whole row."""
        path = self.path / "metrics.csv"
        if self._csv_fields is None or not path.is_file():
            self._csv_fields = self._csv_fields or list(row)
            head = _csv_text(self._csv_fields, [])
        else:
            head = path.read_text()
        write_atomic(path, head + _csv_text(self._csv_fields, [row], header=False))

    def truncate_metrics(self, rounds_done: int) -> None:
        """Resuming after ``rounds_done`` rounds: keep the metrics.csv rows of those rounds only
        (later rows were written after the checkpoint and will be written again)."""
        fields = truncate_csv(self.path / "metrics.csv", "round", rounds_done)
        if fields:
            self._csv_fields = fields

    def write_metrics_json(self, metrics: dict[str, Any]) -> None:
        write_atomic(self.path / "metrics.json", json.dumps(_jsonable(metrics), indent=2, sort_keys=True))

    def write_proportions(self, result, true: np.ndarray, names: list[str], unseen: set[int]) -> None:
        """proportions.csv: per client and TRUE component, the matched estimate (summed over the
        learned components mapped to it, ``learned_component`` "j" or "j1+j2", empty when none
        is) and the truth."""
        groups = learned_groups(result.mapping, len(names))
        est = result.proportions_by_true
        f = io.StringIO(newline="")
        writer = csv.writer(f)
        writer.writerow(["client", "unseen", "component", "learned_component", "estimated", "true"])
        for c in range(true.shape[0]):
            for t, group in enumerate(groups):
                writer.writerow([c, int(c in unseen), names[t], "+".join(str(int(j)) for j in group),
                                 f"{est[c, t]:.6f}", f"{true[c, t]:.6f}"])
        write_atomic(self.path / "proportions.csv", f.getvalue())

    def write_component_accuracy(self, result, names: list[str]) -> None:
        """component_accuracy.csv: rows (table, distribution), columns c0..cK-1, client_model.

        ``raw`` keeps the learned order; in ``matched``, column c_t is the component matched to
        distribution t, so the diagonal is each component on its own distribution. With a
        many-to-one map (learned K != true K) only ``raw`` is written, its columns named
        ``c{j}>p{t}`` (learned j, mapped to true t)."""
        one_to_one = is_one_to_one(result.mapping)
        columns = [f"c{j}" if one_to_one else f"c{j}>p{t}" for j, t in enumerate(result.mapping)]
        tables = (("raw", result.component_accuracy), ("matched", result.component_accuracy_matched))
        f = io.StringIO(newline="")
        writer = csv.writer(f)
        writer.writerow(["table", "distribution", *columns, "client_model"])
        for label, table in tables if one_to_one else tables[:1]:
            for t in range(len(names)):
                writer.writerow([label, names[t], *[f"{v:.4f}" for v in table[t]],
                                 f"{result.client_model_accuracy[t]:.4f}"])
        write_atomic(self.path / "component_accuracy.csv", f.getvalue())


def _csv_text(fields: list[str], rows: list[dict[str, Any]], header: bool = True) -> str:
    """CSV text of ``rows`` (columns ``fields``, extra keys ignored), with the header line."""
    f = io.StringIO(newline="")
    writer = csv.DictWriter(f, fields, extrasaction="ignore")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return f.getvalue()


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
    write_atomic(path, _csv_text(list(fields), rows))
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
    """A table of the final scalar metrics (titled with the algorithm's name), one line naming
    those that do not apply (NaN, e.g. the mixture metrics of FedAvg: "n/a ..."), then where the
    outputs are."""
    table = Table(title=f"fedgmi: final metrics of {algorithm}" if algorithm else "fedgmi: final metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    missing = []
    for key, value in metrics.items():
        if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
            value = value.item() if isinstance(value, np.generic) else value
            if isinstance(value, float) and math.isnan(value):
                missing.append(key)
                continue
            table.add_row(key, format_metric(key, value))
    console = console or Console()
    console.print(table)
    if missing:  # e.g. the mixture metrics of an algorithm without a mixture: said once
        console.print(f"n/a{f' for {algorithm}' if algorithm else ''}: {', '.join(missing)}")
    console.print(f"outputs: {run_dir}")


def _cell(value: float) -> str:
    """A table cell: 3 decimals, "-" where there is nothing (NaN: no such component)."""
    return "-" if math.isnan(float(value)) else f"{value:.3f}"


def print_component_table(result, names: list[str], console: Console | None = None) -> None:
    """The FedGMI paper's component-by-distribution table (matched): rows are the inherent
    distributions p0..pK-1, columns the components (c0..cK-1 matched; ``c{j}>p{t}`` under a
    many-to-one map) and the client model; "-" where a component does not exist (FedAvg)."""
    table = Table(title="accuracy of each component's classifier on each inherent distribution (matched)")
    table.add_column("distribution")
    for column in matched_column_names(result.mapping):
        table.add_column(column, justify="right")
    table.add_column("client model", justify="right")
    matched = result.component_accuracy_matched
    for t in range(len(names)):
        table.add_row(f"p{t} ({names[t]})", *[_cell(v) for v in matched[t]], _cell(result.client_model_accuracy[t]))
    (console or Console()).print(table)
