"""benchmarks/compare.py: the table from finished runs (no training: every run's metrics.json
is already there, so nothing is run again)."""

import csv
import json
import math
from pathlib import Path

from tests.helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def load_compare():
    return load_benchmark("compare")


def test_table_of_finished_runs_mean_std_and_na(tmp_path):
    compare = load_compare()
    runs = tmp_path / "runs"
    values = {("fedgmi", 0): 0.9, ("fedgmi", 1): 0.8, ("fedavg", 0): None, ("fedavg", 1): None}
    for (name, seed), assign in values.items():
        out = runs / f"pm_mnist-{name}-seed{seed}"
        out.mkdir(parents=True)
        metrics = {c: 1.0 + seed for c in compare.COLUMNS}
        metrics["assignment_accuracy"] = assign  # None is how metrics.json stores NaN
        (out / "metrics.json").write_text(json.dumps(metrics))
        (out / "elapsed_s.txt").write_text("10.0\n")
    summary = compare.main(["--algorithms", "fedgmi", "fedavg", "--seeds", "0", "1", "--runs_dir", str(runs),
                            "--out", str(tmp_path / "table")])
    mean, std = summary["table"]["fedgmi"]["assignment_accuracy"]
    assert math.isclose(mean, 0.85) and math.isclose(std, math.sqrt(0.005))
    assert all(math.isnan(v) for v in summary["table"]["fedavg"]["assignment_accuracy"])
    assert summary["total_wall_time_s"] == 40.0
    md = (tmp_path / "table.md").read_text()
    assert "python benchmarks/compare.py --algorithms fedgmi fedavg" in md
    assert "| fedgmi | 0.850 ± 0.071 |" in md and "| fedavg | n/a |" in md
    rows = list(csv.DictReader((tmp_path / "table.csv").open()))
    assert [r["algorithm"] for r in rows] == ["fedgmi", "fedavg"]
    assert float(rows[0]["bytes_up_mean"]) == 1.5


def test_a_variant_runs_the_algorithm_with_another_server_rule():
    compare = load_compare()
    assert compare.split_variant("fedem") == ("fedem", "fedem", [])
    assert compare.split_variant("fedem:all_clients") == (
        "fedem (all_clients)", "fedem", ["--algorithm.init_args.aggregation", "all_clients"])
