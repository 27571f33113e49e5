"""Run several algorithms on the same scenario and seeds; write one table (markdown and CSV).

    python benchmarks/compare.py --algorithms fedgmi fedavg local ifca fedsoft fedem fedgmm \
        fedgengmm oracle --seeds 0 1 2 --extra="--federation.unseen_fraction 0.2"

Algorithm ``name`` runs ``configs/pm_mnist_<name>.yaml`` (``fedgmi``: ``configs/pm_mnist.yaml``,
``fedgmi_joint``: ``configs/pm_mnist_joint.yaml``;
``--config_prefix`` changes the stem); ``name:rule`` runs it with the server rule
``--algorithm.init_args.aggregation rule`` (row ``name (rule)``). One ``fedgmi fit`` subprocess at a time with
OMP_NUM_THREADS=1 (``--jobs`` at a time: each run's wall time is then shared-machine time), for every seed, varying ``--seed`` and ``--scenario.seed`` together (so each
seed is a new scenario draw and a new training seed, the same for every algorithm). Each run's
``metrics.json`` is kept under ``--runs_dir/<prefix>-<name>-seed<s>``; a run whose metrics.json
exists is not run again. The total wall time is the sum of every run's process time (the
benchmark back to back), so a resumed benchmark reports the same total. Writes ``<out>.md`` (the command at the top) and ``<out>.csv`` with mean and
standard deviation (ddof = 1) over seeds; NaN (a method without a mixture) is shown as "n/a".
Prints the table as JSON, with the total wall time in seconds.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("assignment_accuracy", "proportion_error_tv", "client_accuracy_mean", "client_accuracy_p10",
           "unseen_client_accuracy_mean", "component_accuracy_diag_min", "component_accuracy_offdiag_max",
           "bytes_up", "bytes_down", "init_exchanges", "wall_time_s")


def split_variant(entry: str) -> tuple[str, str, list[str]]:
    """``name`` or ``name:rule`` -> (row name, algorithm name, extra fit arguments)."""
    name, _, rule = entry.partition(":")
    if not rule:
        return name, name, []
    return f"{name} ({rule})", name, ["--algorithm.init_args.aggregation", rule]


def config_path(prefix: str, name: str) -> Path:
    """configs/<prefix>.yaml for FedGMI, configs/<prefix>_<mode>.yaml for ``fedgmi_<mode>``
    (e.g. ``fedgmi_joint``), configs/<prefix>_<name>.yaml for a peer."""
    if name == "fedgmi":
        return ROOT / "configs" / f"{prefix}.yaml"
    return ROOT / "configs" / f"{prefix}_{name.removeprefix('fedgmi_')}.yaml"


def run_one(config: Path, seed: int, out: Path, extra: list[str]) -> tuple[dict, float]:
    """One ``fedgmi fit`` subprocess (skipped if ``out/metrics.json`` exists).

    Returns:
        Its metrics and the wall time of its process in seconds (kept in ``out/elapsed_s.txt``,
        so that a resumed benchmark still reports the time of every run; NaN if unknown).
    """
    metrics, elapsed = out / "metrics.json", out / "elapsed_s.txt"
    if not metrics.exists():
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "fedgmi", "fit", "--config", str(config), "--seed", str(seed),
               "--scenario.seed", str(seed), "--output_dir", str(out), "--overwrite", *extra]
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with (out / "stdout.log").open("w") as log:
            subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=ROOT)
        elapsed.write_text(f"{time.perf_counter() - started:.1f}\n")
    return json.loads(metrics.read_text()), float(elapsed.read_text()) if elapsed.exists() else float("nan")


def summarise(values: list) -> tuple[float, float]:
    """Mean and standard deviation (ddof = 1) of the finite values; NaN when none."""
    finite = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return float("nan"), float("nan")
    return float(finite.mean()), float(finite.std(ddof=1)) if finite.size > 1 else 0.0


def cell(mean: float, std: float, column: str) -> str:
    """'mean ± std' (bytes in MB), 'n/a' for NaN."""
    if math.isnan(mean):
        return "n/a"
    if column.startswith("bytes"):
        return f"{mean / 1e6:.1f} ± {std / 1e6:.1f}"
    return f"{mean:.1f} ± {std:.1f}" if column == "wall_time_s" else f"{mean:.3f} ± {std:.3f}"


def table_lines(rows: dict[str, dict[str, tuple[float, float]]], columns: tuple[str, ...]) -> list[str]:
    """A markdown table: one row per algorithm, a 'mean ± std' cell per column."""
    lines = ["| algorithm | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    return lines + [f"| {name} | " + " | ".join(cell(*stats[c], c) for c in columns) + " |"
                    for name, stats in rows.items()]


def write_tables(rows: dict[str, dict[str, tuple[float, float]]], out: Path, command: str, seeds: list[int],
                 total_s: float, jobs: int = 1) -> None:
    """<out>.md and <out>.csv."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# Benchmark: {out.stem}", "", "Made with:", "", f"    {command}", "",
             (f"Seeds {seeds} (``--seed`` and ``--scenario.seed`` varied together); mean ± std over seeds; "
              f"bytes in MB (10^6 bytes); total wall time of the benchmark (all runs back to back) {total_s:.0f} s"
              + (f" ({jobs} runs at a time on a shared machine: wall_time_s compares within the table only)" if jobs > 1 else "")
              + "; "
              "n/a: the method has no mixture (FedAvg, Local)."), "",
             *table_lines(rows, COLUMNS)]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    with out.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["algorithm", *[f"{c}_{s}" for c in COLUMNS for s in ("mean", "std")]])
        for name, stats in rows.items():
            writer.writerow([name, *[v for c in COLUMNS for v in stats[c]]])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algorithms", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--config_prefix", default="pm_mnist")
    parser.add_argument("--extra", default="", help="extra fedgmi fit arguments for every run (one string)")
    parser.add_argument("--runs_dir", default="runs/benchmark")
    parser.add_argument("--out", default="benchmarks/results/pm_mnist")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (1: wall times from an idle machine)")
    args = parser.parse_args(argv)
    command = "python benchmarks/compare.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    variants = {row: (config_path(args.config_prefix, name), extra)
                for row, name, extra in map(split_variant, args.algorithms)}
    missing = [str(p) for p, _ in variants.values() if not p.is_file()]
    if missing:
        parser.error(f"no config for: {', '.join(missing)}")
    started = time.perf_counter()
    jobs = [(seed, name) for seed in args.seeds for name in variants]  # every algorithm for one seed, then the next

    def run(job: tuple[int, str]) -> tuple[dict, float]:
        seed, name = job
        config, variant = variants[name]
        folder = name.replace(" (", "-").rstrip(")")
        out = ROOT / args.runs_dir / f"{args.config_prefix}-{folder}-seed{seed}"
        done = run_one(config, seed, out, [*variant, *shlex.split(args.extra)])
        print(f"done {name} seed {seed} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
        return done

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        finished = list(pool.map(run, jobs))
    results: dict[str, list[dict]] = {row: [] for row in variants}
    for (_, name), (metrics, _) in zip(jobs, finished):
        results[name].append(metrics)
    total = float(np.sum([elapsed for _, elapsed in finished]))  # every run's process, back to back
    rows = {name: {c: summarise([m.get(c) for m in runs]) for c in COLUMNS} for name, runs in results.items()}
    write_tables(rows, ROOT / args.out, command, args.seeds, total, args.jobs)
    summary = {"total_wall_time_s": total, "this_invocation_s": time.perf_counter() - started,
               "seeds": args.seeds, "table": rows}
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
