"""configs/pm_cifar10.yaml runs 2 rounds on CIFAR-10-format files written here, reporting bits/dim.

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
