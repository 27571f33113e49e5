"""FedGMI on real MNIST (configs/pm_mnist.yaml, label-free): the components must specialise
to the rotations, and `fedgmi test` must reproduce the run from its checkpoint."""

import csv
import json

import pytest

from fedgmi.cli import main

#: The shipped config with fewer evaluations, 20 rounds and 5 classifier epochs (the assertions are
#: on the mixture, which the VAEs carry; the full config takes about 5 minutes here).
FAST = ["--federation.eval_every", "10", "--federation.rounds", "20", "--algorithm.init_args.classifier_epochs", "5"]


def test_fedgmi_specialises_on_real_mnist(mnist_data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDGMI_DATA_DIR", str(mnist_data_dir))
    out = tmp_path / "run"
    assert main(["fit", "--config", "configs/pm_mnist.yaml", "--output_dir", str(out), *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # Random-start EM stays near 0.5 here; specialised components score far higher.
    assert metrics["assignment_accuracy"] >= 0.85, metrics
    assert metrics["proportion_error_tv"] <= 0.08, metrics
    assert sorted(metrics["component_matching"]) == [0, 1, 2]
    assert metrics["rounds"] == 20 and metrics["wall_time_s"] > 0
    assert 0 < metrics["test_nll_bits_per_dim"] < 1
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["round"]) for r in rows] == [10, 20]
    props = list(csv.DictReader((out / "proportions.csv").open()))
    assert len(props) == 30 * 3
    assert (out / "config.yaml").is_file() and (out / "checkpoints" / "last.ckpt").stat().st_size > 0
    # `fedgmi test` on the run's own config and checkpoint reproduces its final metrics
    again = tmp_path / "test"
    assert main(["test", "--config", str(out / "config.yaml"), "--ckpt_path",
                 str(out / "checkpoints" / "last.ckpt"), "--output_dir", str(again)]) == 0
    retested = json.loads((again / "metrics.json").read_text())
    for key in ("assignment_accuracy", "proportion_error_tv", "client_accuracy_mean", "test_nll"):
        assert retested[key] == pytest.approx(metrics[key], abs=1e-6), key
    assert (again / "component_accuracy.csv").read_text() == (out / "component_accuracy.csv").read_text()


@pytest.mark.slow
def test_joint_mode_meets_the_paper_table_on_real_mnist(mnist_data_dir, tmp_path, monkeypatch):
    """configs/pm_mnist_joint_paper.yaml, the paper's layout (about 2 minutes here): issue 3's
    thresholds, the paper's table of specialised classifiers (a shared body's heads generalise
    across distributions by design, so the default configs/pm_mnist_joint.yaml is not held to
    the off-diagonal bar)."""
    monkeypatch.setenv("FEDGMI_DATA_DIR", str(mnist_data_dir))
    out = tmp_path / "joint"
    assert main(["fit", "--config", "configs/pm_mnist_joint_paper.yaml", "--output_dir", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["assignment_accuracy"] >= 0.90 and m["proportion_error_tv"] <= 0.06, m
    assert m["client_accuracy_mean"] >= 0.90, m
    assert m["component_accuracy_diag_min"] >= 0.88 and m["component_accuracy_offdiag_max"] <= 0.40, m
    assert m["unseen_proportion_error_tv"] <= 0.06, m
    rows = list(csv.DictReader((out / "component_accuracy.csv").open()))
    assert [r["table"] for r in rows] == ["raw"] * 3 + ["matched"] * 3
