"""Compressed communication on configs/pm_mnist_paper.yaml: every codec and partial-upload setting
against uncompressed FedGMI, one `fedgmi fit` run at a time.

Writes benchmarks/results/compression_pm_mnist.{md,csv} (rewritten after every run, so a cut-off
benchmark keeps what it measured) and prints the rows as JSON.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 FEDGMI_DATA_DIR=../shared/data WANDB_MODE=offline \
        python benchmarks/compression.py [--only NAME ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from fedgmi import plots

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/pm_mnist_paper.yaml"  # the layout the committed table was measured with
RESULTS = ROOT / "benchmarks" / "results"
CODEC = "fedgmi.federated.compression."


def codec(name: str, **init_args) -> dict:
    return {"class_path": CODEC + name, "init_args": init_args}


Q8, Q4 = codec("StochasticQuantization", bits=8), codec("StochasticQuantization", bits=4)

#: name -> the `channel` group of the run (empty: the default, uncompressed channel).
SETTINGS: dict[str, dict] = {  # in order of priority
    "uncompressed": {},
    "topk_1pct_ef": {"uplink": codec("TopK", fraction=0.01)},
    "topk_5pct_ef_8bit": {"uplink": codec("TopK", fraction=0.05, values=Q8)},
    "qsgd_4bit": {"uplink": Q4},
    "partial_top1": {"upload_top_m": 1},
    "partial_top1_qsgd_4bit": {"uplink": Q4, "upload_top_m": 1},
    "qsgd_2bit": {"uplink": codec("StochasticQuantization", bits=2)},
    "downlink_8bit_uplink_qsgd_4bit": {"uplink": Q4, "downlink": Q8},
    "budget_150kB_topk_8bit": {"uplink": codec("TopK", fraction=1.0, values=Q8), "uplink_budget_bytes": 150_000},
    "randomk_5pct_ef": {"uplink": codec("RandomK", fraction=0.05)},
    "fp16": {"uplink": codec("HalfPrecision", dtype="float16")},
    "partial_threshold_0.1": {"upload_threshold": 0.1},
    "qsgd_8bit": {"uplink": Q8},
    "topk_10pct_ef": {"uplink": codec("TopK", fraction=0.1)},
}

KEYS = ("assignment_accuracy", "proportion_error_tv", "client_accuracy_mean", "bytes_up", "bytes_up_rounds",
        "bytes_down", "compression_ratio_up", "budget_unmet_clients", "wall_time_s")


def run_setting(name: str, channel: dict, out_root: Path, reuse: bool) -> dict:
    """One `fedgmi fit` of the config with this channel group; its metrics.json (with
    ``reuse``, a finished run of the same setting is read instead of run again)."""
    out = out_root / name
    if reuse and (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    extra = out_root / f"{name}.yaml"
    extra.write_text(yaml.safe_dump({"channel": channel}) if channel else "{}\n")
    cmd = [sys.executable, "-m", "fedgmi", "fit", "--config", CONFIG, "--config", str(extra), "--output_dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with (out_root / f"{name}.log").open("w") as log:
        subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return json.loads((out / "metrics.json").read_text())


def table_rows(results: dict[str, dict]) -> list[dict]:
    """One row per setting, with uplink reduction and metric losses against "uncompressed"."""
    base = results.get("uncompressed")
    rows = []
    for name, m in results.items():
        row = {"setting": name, **{k: m.get(k) for k in KEYS}}
        if base:
            row["uplink_reduction_total"] = base["bytes_up"] / m["bytes_up"]
            row["uplink_reduction_rounds"] = base["bytes_up_rounds"] / m["bytes_up_rounds"]
            row["assignment_accuracy_loss"] = base["assignment_accuracy"] - m["assignment_accuracy"]
            row["proportion_error_tv_increase"] = m["proportion_error_tv"] - base["proportion_error_tv"]
        rows.append(row)
    return rows


def write_tables(rows: list[dict], command: str, out_root: Path) -> None:
    """compression_pm_mnist.{csv,md} and .png (every setting's metrics against cumulative uplink)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    curves = {r["setting"]: list(csv.DictReader((out_root / r["setting"] / "metrics.csv").open())) for r in rows}
    plots.plot_runs_vs_bytes(curves, RESULTS / "compression_pm_mnist.png")
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with (RESULTS / "compression_pm_mnist.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)
    cols = ["setting", "assignment_accuracy", "proportion_error_tv", "client_accuracy_mean", "bytes_up",
            "bytes_up_rounds", "uplink_reduction_total", "uplink_reduction_rounds", "budget_unmet_clients"]
    lines = [f"Command: `{command}`", "",
             (f"Config: `{CONFIG}` (30 rounds, 30 clients, K = 3, real MNIST test split), seed 0, one run per "
             "setting. bytes_up counts everything uploaded, including FedGMI's topic-model initialisation; "
             "bytes_up_rounds only the rounds (what the channel compresses). Reductions are against "
             "`uncompressed`. With `--reuse` a setting already finished under runs/compression/ is read, "
              "not run again (each setting ran once, one run at a time)."), "",
             ("Plot: `compression_pm_mnist.png` (each setting's assignment_accuracy and proportion_error_tv "
              "against cumulative uplink bytes)."), "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r.get(c) for c in cols]
        lines.append("| " + " | ".join(_cell(v) for v in cells) + " |")
    (RESULTS / "compression_pm_mnist.md").write_text("\n".join(lines) + "\n")


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.4g}"
    return "" if value is None else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out", default="runs/compression", help="where the runs go")
    parser.add_argument("--reuse", action="store_true", help="read finished runs instead of running them again")
    args = parser.parse_args()
    command = "OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python " + " ".join(["benchmarks/compression.py", *sys.argv[1:]])
    out_root = ROOT / args.out
    out_root.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.only:
        started = time.perf_counter()
        results[name] = run_setting(name, SETTINGS[name], out_root, args.reuse)
        print(f"{name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        write_tables(table_rows(results), command, out_root)
    print(json.dumps(table_rows(results), indent=2))


if __name__ == "__main__":
    main()
