"""pFedGM and FedVTC beside FedAvg, Local, FedGMI (label-free and joint) and the Oracle, in
three blocks: class skew with Dirichlet(0.1) and Dirichlet(1.0) class distributions, and the
rotation mixture. One table per block (markdown and one CSV).

    python benchmarks/generative.py --seeds 0 1 2

Every run is ``fedgmi fit --config configs/<row's config>.yaml`` with the block's scenario and
:data:`COMMON` (20 clients of 100..150 samples, 20 rounds of half the clients, evaluation with
``--evaluation.generalization true`` at the end), one subprocess at a time with
OMP_NUM_THREADS=1 (``compare.run_one``: a run whose metrics.json exists is not run again).

Class skew in the probabilistic-mixture scenario (:class:`fedgmi.data.shifts.ClassSkew`):
K = 3 components, component k's class distribution q_k ~ Dirichlet(beta 1_10) over the ten
digits, each client a Dirichlet(0.5) mixture of the components (paper, FedVTC: each client's
class distribution is Dirichlet(beta); here: the components' are, and a client's is the mixture
sum_k pi_ck q_k, so the skew per client is milder than the paper's at the same beta).

Columns: personalised accuracy (``client_accuracy_mean``/``_p10``: each training client's
personalised model on its own test part), generalisation accuracy (the same model on the test
parts of all clients together; :mod:`fedgmi.federated.evaluation`), uplink and
downlink bytes (initialisation included) and the in-process wall time.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import ROOT, run_one, summarise, table_lines

CLASS_SKEW = ["--scenario.angles", "null", "--scenario.shift", "fedgmi.data.shifts.ClassSkew",
              "--scenario.shift.num_components", "3", "--scenario.shift.dirichlet"]
#: Block key -> (title, scenario arguments).
BLOCKS = {
    "dir0.1": ("Class skew, Dirichlet(0.1)", [*CLASS_SKEW, "0.1"]),
    "dir1.0": ("Class skew, Dirichlet(1.0)", [*CLASS_SKEW, "1.0"]),
    "rotation": ("Rotation mixture (0, 90, 180 degrees)", ["--scenario.angles", "[0, 90, 180]"]),
}
#: Row name -> (config stem under configs/, extra fit arguments). "FedVTC (matching)" turns on
#: the distribution-matching term the config leaves off (see configs/pm_mnist_fedvtc.yaml).
ROWS = {
    "pFedGM": ("pm_mnist_pfedgm", []),
    "FedVTC": ("pm_mnist_fedvtc", []),
    "FedVTC (matching)": ("pm_mnist_fedvtc", ["--algorithm.init_args.matching_weight", "1.0"]),
    "FedAvg": ("pm_mnist_fedavg", []),
    "Local": ("pm_mnist_local", []),
    "FedGMI (label-free)": ("pm_mnist_paper", []),  # the paper's layout, as measured (issue 15 changed pm_mnist)
    "FedGMI (joint)": ("pm_mnist_joint_paper", []),
    "Oracle": ("pm_mnist_oracle", []),
}
COMMON = ["--scenario.num_clients", "20", "--scenario.samples_per_client", "[100, 150]", "--federation.rounds", "20",
          "--federation.client_fraction", "0.5", "--federation.eval_every", "20", "--federation.unseen_fraction", "0",
          "--evaluation.generalization", "true"]
COLUMNS = ("client_accuracy_mean", "client_accuracy_p10", "generalization_accuracy_mean", "bytes_up", "bytes_down",
           "wall_time_s")


def folder(block: str, row: str, seed: int) -> str:
    """The run folder's name: ``<block>-<row>-seed<s>`` in lower case, no spaces or brackets."""
    slug = row.lower().replace(" (", "-").replace(")", "").replace(" ", "-")
    return f"{block}-{slug}-seed{seed}"


def write(results: dict[str, dict[str, list[dict]]], out: Path, command: str, seeds: list[int], total: float) -> dict:
    """<out>.md (one table per block) and <out>.csv (a ``block`` column); returns the tables."""
    tables = {block: {row: {c: summarise([m.get(c) for m in runs]) for c in COLUMNS} for row, runs in rows.items()}
              for block, rows in results.items()}
    lines = ["# Benchmark: generative personalised FL (pFedGM, FedVTC)", "", "Made with:", "", f"    {command}", "",
             (f"Seeds {seeds} (``--seed`` and ``--scenario.seed`` varied together); mean ± std over seeds; bytes in "
              f"MB (10^6 bytes); every run with `{' '.join(COMMON)}`; total wall time of the benchmark (all runs "
              f"back to back) {total:.0f} s."), ""]
    for block, rows in tables.items():
        lines += [f"## {BLOCKS[block][0]}", "", *table_lines(rows, COLUMNS), ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines))
    with out.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["block", "algorithm", *[f"{c}_{s}" for c in COLUMNS for s in ("mean", "std")]])
        for block, rows in tables.items():
            for row, stats in rows.items():
                writer.writerow([block, row, *[v for c in COLUMNS for v in stats[c]]])
    return tables


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--blocks", nargs="+", choices=sorted(BLOCKS), default=list(BLOCKS))
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--runs_dir", default="runs/benchmark/generative")
    parser.add_argument("--out", default="benchmarks/results/generative_pfl")
    args = parser.parse_args(argv)
    command = "python benchmarks/generative.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    started, run_times = time.perf_counter(), []
    results = {block: {row: [] for row in args.rows} for block in args.blocks}
    for seed in args.seeds:
        for block in args.blocks:
            for row in args.rows:
                stem, variant = ROWS[row]
                metrics, elapsed = run_one(ROOT / "configs" / f"{stem}.yaml", seed,
                                           ROOT / args.runs_dir / folder(block, row, seed),
                                           [*BLOCKS[block][1], *COMMON, *variant])
                results[block][row].append(metrics)
                run_times.append(elapsed)
                print(f"done {block} {row} seed {seed} ({time.perf_counter() - started:.0f} s)", file=sys.stderr,
                      flush=True)
    total = float(np.sum(run_times))
    tables = write(results, ROOT / args.out, command, args.seeds, total)
    summary = {"total_wall_time_s": total, "seeds": args.seeds, "tables": tables}
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
