"""benchmarks/generative.py: three blocks from finished runs (no training: every run's metrics.json
is already there, so nothing is run again)."""

import csv
import json
import math
from pathlib import Path

from tests.helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def test_one_table_per_block_from_finished_runs(tmp_path):
    gen = load_benchmark("generative")
    runs = tmp_path / "runs"
    for block in ("dir0.1", "rotation"):
        for row in ("pFedGM", "FedGMI (joint)"):
            for seed in (0, 1):
                out = runs / gen.folder(block, row, seed)
                out.mkdir(parents=True)
                metrics = {c: 1.0 for c in gen.COLUMNS}
                metrics["generalization_accuracy_mean"] = 0.5 + 0.1 * seed if block == "dir0.1" else None
                (out / "metrics.json").write_text(json.dumps(metrics))
                (out / "elapsed_s.txt").write_text("5.0\n")
    summary = gen.main(["--seeds", "0", "1", "--blocks", "dir0.1", "rotation", "--rows", "pFedGM", "FedGMI (joint)",
                        "--runs_dir", str(runs), "--out", str(tmp_path / "table")])
    mean, std = summary["tables"]["dir0.1"]["pFedGM"]["generalization_accuracy_mean"]
    assert math.isclose(mean, 0.55) and math.isclose(std, math.sqrt(0.005))
    assert summary["total_wall_time_s"] == 40.0
    md = (tmp_path / "table.md").read_text()
    assert "## Class skew, Dirichlet(0.1)" in md and "## Rotation mixture" in md
    assert "| FedGMI (joint) | 1.000 ± 0.000 | 1.000 ± 0.000 | n/a |" in md
    rows = list(csv.DictReader((tmp_path / "table.csv").open()))
    assert [(r["block"], r["algorithm"]) for r in rows] == [
        ("dir0.1", "pFedGM"), ("dir0.1", "FedGMI (joint)"), ("rotation", "pFedGM"), ("rotation", "FedGMI (joint)")]
    assert gen.folder("dir1.0", "FedGMI (label-free)", 2) == "dir1.0-fedgmi-label-free-seed2"


def test_every_row_has_a_config():
    gen = load_benchmark("generative")
    missing = [stem for stem, _ in gen.ROWS.values() if not (ROOT / "configs" / f"{stem}.yaml").is_file()]
    assert not missing, missing
