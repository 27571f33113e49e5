"""benchmarks/tuned.py: the same grid for every method, the choice on validation seeds, the table
of the test seeds at the chosen point (from finished runs: nothing is trained here)."""

import csv
import json
import shutil

from tests.helpers import load_benchmark


def fake_run(folder, accuracy, **extra):
    folder.mkdir(parents=True)
    metrics = {"client_accuracy_mean": accuracy, "rounds": 30, "bytes_up": 2e6, "bytes_down": 4e6,
               "train_sample_passes": 3e5, "assignment_accuracy": None, **extra}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "cost.json").write_text(json.dumps({"cpu_s": 100.0, "wall_s": 60.0}))


def test_each_method_runs_its_chosen_grid_point_on_the_test_seeds(tmp_path):
    tuned = load_benchmark("tuned")
    runs = tmp_path / "runs"
    val = {"fedavg": {(5, 0.001): 0.80, (30, 0.001): 0.90}, "fedgmi": {(5, 0.001): 0.85, (30, 0.001): 0.85}}
    for method, points in val.items():
        for (e, lr), acc in points.items():
            fake_run(runs / "rotation" / method / f"E{e}-lr{lr:g}-seed100", acc)
    chosen = {"fedavg": (30, 0.001), "fedgmi": (5, 0.001)}  # fedgmi: a tie, so the cheaper point
    for method, (e, lr) in chosen.items():
        for seed, acc in ((0, 0.7), (1, 0.9)):
            fake_run(runs / "rotation" / method / f"E{e}-lr{lr:g}-seed{seed}", acc,
                     bytes_up=1e6 if method == "fedavg" else 3e6)
    rows = tuned.main(["--methods", "fedgmi", "fedavg", "--epochs", "5", "30", "--lrs", "0.001",
                       "--seeds", "0", "1", "--runs_dir", str(runs), "--out", str(tmp_path / "table")])
    by_method = {r["method"]: r for r in rows}
    assert (by_method["fedavg"]["epochs"], by_method["fedgmi"]["epochs"]) == (30, 5)
    assert by_method["fedgmi"]["client_accuracy_mean_mean"] == 0.8
    assert by_method["fedgmi"]["total_bytes_over_fedavg"] == (3e6 + 4e6) / (1e6 + 4e6)
    assert by_method["fedavg"]["sample_passes_per_round"] == 1e4
    md = (tmp_path / "table.md").read_text()
    assert "python benchmarks/tuned.py --methods fedgmi fedavg" in md
    assert "| fedgmi | 5 | 0.001 | 0.850 | 0.800 ± 0.141 |" in md
    assert "| fedavg | 0.800 | **0.900** |" in md  # the grid's validation scores, the choice in bold
    assert [r["method"] for r in csv.DictReader((tmp_path / "table.csv").open())] == ["fedgmi", "fedavg"]


def test_a_grid_point_sets_the_methods_own_local_epoch_key():
    tuned = load_benchmark("tuned")
    assert tuned.point_args("fedgmi", 15, 0.003)[:2] == ["--algorithm.init_args.classifier_epochs", "15"]
    assert tuned.point_args("fedavg", 15, 0.003) == ["--algorithm.init_args.local_epochs", "15",
                                                      "--algorithm.init_args.optimizer.init_args.lr", "0.003"]


def test_tune_on_one_kind_serves_every_kind(tmp_path):
    tuned = load_benchmark("tuned")
    runs = tmp_path / "runs"
    for (e, acc) in ((5, 0.9), (30, 0.8)):  # rotation's grid prefers 5 epochs
        fake_run(runs / "rotation" / "fedavg" / f"E{e}-lr0.001-seed100", acc)
    for kind in ("rotation", "corruption"):
        fake_run(runs / kind / "fedavg" / "E5-lr0.001-seed0", 0.5)
    rows = tuned.main(["--kinds", "rotation", "corruption", "--tune_on", "rotation", "--methods", "fedavg",
                       "--epochs", "5", "30", "--lrs", "0.001", "--seeds", "0", "--runs_dir", str(runs),
                       "--out", str(tmp_path / "table")])
    assert [(r["kind"], r["epochs"]) for r in rows] == [("rotation", 5), ("corruption", 5)]
    assert not (runs / "corruption" / "fedavg" / "E30-lr0.001-seed100").exists()  # no grid of its own
    assert "Settings chosen on the rotation grid" in (tmp_path / "table.md").read_text()


def test_merge_into_replaces_only_the_rerun_methods_rows(tmp_path):
    tuned = load_benchmark("tuned")
    runs = tmp_path / "runs"
    for method in ("fedavg", "fedgmi"):
        for seed in (100, 0):
            fake_run(runs / "rotation" / method / f"E5-lr0.001-seed{seed}", 0.5, bytes_up=1e6)
    common = ["--epochs", "5", "--lrs", "0.001", "--seeds", "0", "--runs_dir", str(runs)]
    tuned.main(["--methods", "fedgmi", "fedavg", *common, "--out", str(tmp_path / "table")])
    before = (tmp_path / "table.md").read_text()
    shutil.rmtree(runs)  # fedgmi changed: its runs are redone; FedAvg's are gone too, its rows stay
    for seed, acc in ((100, 0.6), (0, 0.75)):
        fake_run(runs / "rotation" / "fedgmi" / f"E5-lr0.001-seed{seed}", acc, bytes_up=3e6)
    rows = tuned.main(["--methods", "fedgmi", *common, "--merge_into", str(tmp_path / "table")])
    assert rows[0]["total_bytes_over_fedavg"] == (3e6 + 4e6) / (1e6 + 4e6)  # FedAvg's bytes from the table
    md = (tmp_path / "table.md").read_text()
    assert "| fedgmi | 5 | 0.001 | 0.600 | 0.750 ± 0.000 |" in md and "| fedgmi | **0.600** |" in md
    fedavg_lines = [line for line in before.splitlines() if line.startswith("| fedavg |")]
    assert fedavg_lines and all(line in md for line in fedavg_lines)
    assert "Rows of fedgmi replaced by" in md and "--merge_into" in md
    table = list(csv.DictReader((tmp_path / "table.csv").open()))
    assert [(r["method"], float(r["client_accuracy_mean_mean"])) for r in table] == [("fedgmi", 0.75), ("fedavg", 0.5)]
