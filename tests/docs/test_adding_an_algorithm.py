"""docs/adding_an_algorithm.md: its FedProx runs as written, through the CLI and the loop."""

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from fedgmi.cli import main

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "adding_an_algorithm.md"


@pytest.fixture
def fedprox_module(tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL).group(1)
    assert len(code.splitlines()) < 50  # a complete peer in under 50 lines
    (tmp_path / "fedprox.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("fedprox", None)


def fit(out: Path, *extra: str) -> dict:
    args = ["fit", "--config", str(ROOT / "configs" / "pm_digits.yaml"), "--federation.rounds", "2",
            "--output_dir", str(out), *extra]
    assert main(args) == 0
    return json.loads((out / "metrics.json").read_text())


def global_state(out: Path) -> list[torch.Tensor]:
    return torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["strategy"]["global_state"]


def test_the_documented_fedprox_runs_and_with_mu_zero_is_fedavg(fedprox_module, tmp_path):
    prox = fit(tmp_path / "prox", "--algorithm", "fedprox.FedProx", "--algorithm.init_args.mu", "0.0",
               "--algorithm.init_args.local_epochs", "2")
    avg = fit(tmp_path / "avg", "--algorithm", "FedAvg", "--algorithm.init_args.local_epochs", "2")
    assert prox["bytes_up"] == avg["bytes_up"] > 0
    for a, b in zip(global_state(tmp_path / "prox"), global_state(tmp_path / "avg")):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    moved = fit(tmp_path / "prox1", "--algorithm", "fedprox.FedProx", "--algorithm.init_args.mu", "1.0",
                "--algorithm.init_args.local_epochs", "2")
    assert 0.0 <= moved["client_accuracy_mean"] <= 1.0
    assert not torch.equal(global_state(tmp_path / "prox1")[0], global_state(tmp_path / "avg")[0])
