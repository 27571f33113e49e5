"""One table: every kind of inherent distribution (shift) on MNIST, four methods side by side.

    FEDGMI_DATA_DIR=../shared/data python benchmarks/shifts.py \
        --kinds rotation corruption label_permutation class_skew --seed 0 --rounds 30

Each row is a shift kind; its scenario is the ``scenario`` section of
``configs/pm_mnist_<kind>.yaml``. Each column group is one method with its own config, whose
scenario section is replaced by the kind's (a second ``--config`` holding only that section,
with ``scenario.angles: null`` so that the kind's ``scenario.shift`` is the only choice):

* FedGMI label-free: ``configs/pm_mnist_paper.yaml`` (E-step from the VAEs' log p_k(x) only);
* FedGMI joint: ``configs/pm_mnist_joint_paper.yaml`` (plus the heads' log p_k(y | x));
* FedAvg: ``configs/pm_mnist_fedavg.yaml``;
* Oracle: ``configs/pm_mnist_oracle.yaml`` (told every sample's true component).

Every run uses the same ``--federation.rounds`` and ``--federation.unseen_fraction`` (given
here, overriding the configs) and the same seed (``--seed`` and ``--scenario.seed``), one
``python -m fedgmi fit`` subprocess at a time with OMP_NUM_THREADS=1. A run whose
``metrics.json`` exists under ``--runs_dir`` is not run again. Writes ``<out>.md`` (with the
command at the top) and ``<out>.csv``: assignment accuracy, proportion TV error (both over the
seen clients) and mean client test accuracy.
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
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
METHODS = {  # column name -> config
    "fedgmi_label_free": "configs/pm_mnist_paper.yaml",  # the paper's layout, as measured
    "fedgmi_joint": "configs/pm_mnist_joint_paper.yaml",
    "fedavg": "configs/pm_mnist_fedavg.yaml",
    "oracle": "configs/pm_mnist_oracle.yaml",
}
METRICS = ("assignment_accuracy", "proportion_error_tv", "client_accuracy_mean")
SHORT = {"assignment_accuracy": "assign. acc.", "proportion_error_tv": "prop. TV",
         "client_accuracy_mean": "client acc."}


def scenario_overlay(kind: str, folder: Path) -> Path:
    """A config file holding only the scenario section of configs/pm_mnist_<kind>.yaml."""
    source = ROOT / "configs" / f"pm_mnist_{kind}.yaml"
    scenario = dict(yaml.safe_load(source.read_text())["scenario"])
    scenario.setdefault("angles", None)  # the kind's shift replaces the base config's angles
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"scenario-{kind}.yaml"
    path.write_text(yaml.safe_dump({"scenario": scenario}, sort_keys=False))
    return path


def run_one(config: Path, overlay: Path, out: Path, seed: int, extra: list[str]) -> dict:
    """One ``fedgmi fit`` subprocess (skipped when ``out/metrics.json`` exists)."""
    metrics = out / "metrics.json"
    if not metrics.exists():
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "fedgmi", "fit", "--config", str(config), "--config", str(overlay),
               "--seed", str(seed), "--scenario.seed", str(seed), "--output_dir", str(out), *extra]
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with (out / "stdout.log").open("w") as log:
            subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=ROOT)
        (out / "elapsed_s.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
    return json.loads(metrics.read_text())


def label_permutation_bound(overlay: Path, rounds: int, unseen_fraction: float, seed: int) -> float:
    """Mean over the seen clients of ``max_k`` (share of component k in the client's test part).

    Under label permutation (cyclic shifts: any two components disagree on every label) p(x)
    is the same for every component, so a predictor that sees only x can do no better than
    answering with the label of the client's majority component, even with perfect per-
    component classifiers and exactly known proportions: this is its expected accuracy.
    """
    sys.path.insert(0, str(ROOT))
    from fedgmi.cli import build_parser

    parser = build_parser()
    cfg = parser.parse_args(["validate", "--config", str(ROOT / METHODS["fedavg"]), "--config", str(overlay),
                             "--scenario.seed", str(seed), "--federation.rounds", str(rounds),
                             "--federation.unseen_fraction", str(unseen_fraction)])
    objs = parser._subcommands_action._name_parser_map["validate"].instantiate(cfg.validate)
    from fedgmi.data import build_scenario

    scenario = build_scenario(objs.scenario)
    seen = objs.federation.split_clients(scenario.num_clients)[0]
    k = scenario.num_components
    shares = [float(np.bincount(scenario.truth.z_test[c].numpy(), minlength=k).max()) / scenario.truth.z_test[c].numel()
              for c in seen]
    return float(np.mean(shares))


def fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}"


def write_table(results: dict, out: Path, command: str, rounds: int, seed: int, notes: list[str] = ()) -> None:
    """<out>.md (one row per kind, METRICS x METHODS columns) and <out>.csv (long format)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    head = ["kind"] + [f"{m} {SHORT[c]}" for m in METHODS for c in METRICS]
    lines = [f"# Shift kinds on MNIST: {', '.join(results)}", "", "Made with:", "", f"    {command}", "",
             (f"Seed {seed}, {rounds} rounds, offline MNIST test split (10,000 images, "
              "FEDGMI_DATA_DIR=../shared/data); 30 clients, 20% of them unseen (never trained on). "
              "assign. acc.: share of seen clients' test samples whose most responsible component is "
              "the true one (after the best matching); prop. TV: mean total-variation distance "
              "between estimated and true proportions; client acc.: mean test accuracy of the seen "
              "clients' personalised models. n/a: the method has no mixture (FedAvg)."), "",
             "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for kind, row in results.items():
        lines.append("| " + " | ".join([kind] + [fmt(row[m].get(c)) for m in METHODS for c in METRICS]) + " |")
    lines += ["", *notes] if notes else []
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    with out.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["kind", "method", *METRICS, "wall_time_s"])
        for kind, row in results.items():
            for m in METHODS:
                writer.writerow([kind, m, *[row[m].get(c) for c in METRICS], row[m].get("wall_time_s")])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", nargs="+", default=["rotation", "corruption", "label_permutation", "class_skew"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--unseen_fraction", type=float, default=0.2)
    parser.add_argument("--runs_dir", default="runs/shifts")
    parser.add_argument("--out", default="benchmarks/results/shifts_pm_mnist_untuned")
    args = parser.parse_args(argv)
    command = "python benchmarks/shifts.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    extra = ["--federation.rounds", str(args.rounds), "--federation.unseen_fraction", str(args.unseen_fraction)]
    runs = ROOT / args.runs_dir
    results: dict[str, dict] = {}
    started = time.perf_counter()
    for kind in args.kinds:
        overlay = scenario_overlay(kind, runs)
        results[kind] = {m: {} for m in METHODS}
        for method in args.methods:
            out = runs / f"{kind}-{method}-r{args.rounds}-seed{args.seed}"
            results[kind][method] = run_one(ROOT / METHODS[method], overlay, out, args.seed, extra)
            print(f"done {kind} {method} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
        notes = []
        if "label_permutation" in results:
            bound = label_permutation_bound(runs / "scenario-label_permutation.yaml", args.rounds,
                                            args.unseen_fraction, args.seed)
            notes.append(f"Label permutation, x-only bound on client accuracy (perfect classifiers, true "
                         f"proportions, predicting each client's majority component's label): {bound:.3f}.")
        write_table(results, ROOT / args.out, command, args.rounds, args.seed, notes)  # after every kind
    print(json.dumps(results, indent=1, default=str)[:2000])
    return results


if __name__ == "__main__":
    main()
