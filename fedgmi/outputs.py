"""The run directory: every output of a run in one folder, written as the run goes.

Layout::

    <output_dir>/
      config.yaml          the resolved configuration (runs again with --config)
      metrics.csv          one row per evaluation (appended and flushed as it happens)
      metrics.json         final values of every metric, plus rounds and wall_time_s
      proportions.csv      client, component, learned_component, estimated, true
      checkpoints/last.ckpt
"""

from __future__ import annotations

import csv
import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table


def default_output_dir(name: str) -> Path:
    """``runs/<name>-<YYYYmmdd-HHMMSS>`` (relative to the working directory)."""
    return Path("runs") / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


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

    def write_metrics_json(self, metrics: dict[str, Any]) -> None:
        with (self.path / "metrics.json").open("w") as f:
            json.dump(_jsonable(metrics), f, indent=2, sort_keys=True)

    def write_proportions(
        self, estimated: np.ndarray, true: np.ndarray, mapping: np.ndarray, names: list[str]
    ) -> None:
        """proportions.csv: per client and TRUE component, the matched estimate and the truth."""
        learned_of_true = np.argsort(mapping)
        with (self.path / "proportions.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["client", "component", "learned_component", "estimated", "true"])
            for c in range(true.shape[0]):
                for t, j in enumerate(learned_of_true):
                    writer.writerow([c, names[t], int(j), f"{estimated[c, j]:.6f}", f"{true[c, t]:.6f}"])


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


def print_summary(metrics: dict[str, Any], run_dir: Path, console: Console | None = None) -> None:
    """A table of the final scalar metrics, then where the outputs are."""
    table = Table(title="fedgmi: final metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console = console or Console()
    console.print(table)
    console.print(f"outputs: {run_dir}")
