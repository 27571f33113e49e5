"""The data configs through the CLI: configs/pm_cifar10.yaml runs 2 rounds on CIFAR-10-format
files written here, reporting bits/dim; the union config builds from IDX files written here; bad
shifts and absent data stop with one line and exit status 2.

600 random 8-bit images (five training batches of 100 and a test batch of 100, torchvision's
pickled format) read through torchvision's CIFAR10 class; the models are narrowed and the
clients few so that it takes seconds on a CPU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fedgmi.cli import main
from tests.data.formats import write_cifar10

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--federation.rounds", "2", "--federation.eval_every", "1", "--federation.client_fraction", "0.5",
         "--scenario.num_clients", "6", "--scenario.samples_per_client", "[60, 90]",
         "--algorithm.init_args.warmup_rounds", "1", "--algorithm.init_args.topic_clusters", "8",
         "--algorithm.init_args.local_epochs", "1",
         "--algorithm.init_args.component.init_args.channels", "[16, 32]",
         "--algorithm.init_args.classifier.init_args.channels", "[8, 16, 16]",
         "--fabric.accelerator", "cpu", "--logging.wandb", "false"]


def test_cifar10_config_runs_two_rounds_and_reports_bits_per_dim(tmp_path: Path, monkeypatch, capsys) -> None:
    written = write_cifar10(tmp_path / "data", per_batch=100, seed=0)
    assert written["images"].shape == (600, 3, 32, 32)
    monkeypatch.setenv("FEDGMI_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "run"
    assert main(["fit", "--config", str(ROOT / "configs" / "pm_cifar10.yaml"), "--output_dir", str(out), *SMALL]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    bits = metrics["test_nll_bits_per_dim"]
    assert math.isfinite(bits) and 7.0 < bits < 12.0  # random 8-bit images: near 8 bits/dim at best
    assert metrics["rounds"] == 2
    printed = capsys.readouterr().out
    assert "test_nll_bits_per_dim" in printed and "600 images" in printed
    print(f"CIFAR-10 format, 600 images, 2 rounds: test_nll_bits_per_dim = {bits:.3f}")


@pytest.mark.parametrize("config", ["pm_cifar10.yaml", "pm_fashion.yaml", "pm_mnist_union.yaml"])
def test_configs_for_absent_data_say_where_to_put_it(config: str, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FEDGMI_DATA_DIR", str(tmp_path))
    assert main(["validate", "--config", str(ROOT / "configs" / config), "--scenario.download", "false"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(tmp_path) in err and "scenario.download: true" in err


def test_union_config_builds_from_written_idx_files(tmp_path: Path, monkeypatch, capsys) -> None:
    from tests.data.formats import write_idx_dataset

    for seed, name in enumerate(("mnist", "fashion_mnist", "kmnist")):
        write_idx_dataset(tmp_path, name, n_train=60, n_test=20, seed=seed)
    monkeypatch.setenv("FEDGMI_DATA_DIR", str(tmp_path))
    args = ["validate", "--config", str(ROOT / "configs" / "pm_mnist_union.yaml"), "--scenario.download", "false",
            "--scenario.num_clients", "4", "--scenario.samples_per_client", "[20, 30]"]
    assert main(args) == 0
    assert "K = 3" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--config", "pm_mnist_corruption.yaml", "--scenario.shift.init_args.corruptions", "[none, colour]"],
         "has 'colour' but dataset 'mnist' has grey images"),
        (["--config", "pm_mnist_label_permutation.yaml", "--scenario.shift.init_args.num_components", "11"],
         "scenario.shift.init_args.num_components = 11 is more than dataset 'mnist' with 10 classes"),
        (["--config", "pm_mnist_class_skew.yaml", "--scenario.shift.init_args.classes", "[[0], [0]]"],
         "scenario.shift.init_args.classes = [[0], [0]] repeats a subset"),
        (["--config", "pm_mnist_corruption.yaml", "--scenario.shift.init_args.severity", "9"],
         "scenario.shift.init_args.severity = 9 must be an integer in 1..5"),
        (["--config", "pm_mnist_corruption.yaml", "--scenario.angles", "[0, 90]"], "not both"),
    ],
)
def test_bad_shift_is_one_line_exit_2(args: list[str], needle: str, capsys) -> None:
    args = [str(ROOT / "configs" / a) if a.endswith(".yaml") else a for a in args]
    assert main(["validate", *args]) == 2  # refused before any data is loaded
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and needle in err
