"""docs/adding_an_algorithm.md (the extension guide): both worked examples run as printed:
check_strategy on each class, and each 2-round digits command (from a folder holding the
module and configs/, as the page says); FedProx with mu = 0 is FedAvg."""

import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch

import fedgmi
from fedgmi.cli import main

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "adding_an_algorithm.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
COMMANDS = re.findall(r"^    PYTHONPATH=\. fedgmi (fit .*)$", DOC.read_text(), re.MULTILINE)


def block(name: str) -> str:
    """The page's code block that defines class ``name``."""
    return next(b for b in BLOCKS if f"class {name}(" in b)


def command(module: str) -> list[str]:
    """The page's command that runs ``module`` (without ``PYTHONPATH=. fedgmi``)."""
    return shlex.split(next(c for c in COMMANDS if f"--algorithm {module}." in c))


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """The folder a reader runs from: the two modules as printed, configs/ beside them."""
    for module, name in (("fedprox", "FedProx"), ("fedkmeans", "FedKMeans")):
        (tmp_path / f"{module}.py").write_text(block(name))
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for module in ("fedprox", "fedkmeans"):
        sys.modules.pop(module, None)


def run(args: list[str], out: Path) -> dict:
    assert main(args) == 0
    return json.loads((out / "metrics.json").read_text())


def global_state(out: Path) -> list[torch.Tensor]:
    return torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["strategy"]["global_state"]


def test_the_examples_are_short_and_pass_check_strategy(folder, digits_base):
    from fedkmeans import FedKMeans
    from fedprox import FedProx

    from tests.helpers import digits_scenario
    assert len(block("FedProx").splitlines()) < 50 and len(block("FedKMeans").splitlines()) < 60
    scenario = digits_scenario(digits_base, num_clients=3)
    assert 0.0 <= fedgmi.check_strategy(FedProx(mu=0.1, local_epochs=1), scenario)["client_accuracy_mean"] <= 1
    row = fedgmi.check_strategy(FedKMeans, scenario)
    assert row["assignment_accuracy"] > 0.4  # the clusters follow the rotations, above chance (1/3)


def test_the_documented_fedprox_command_runs_and_with_mu_zero_is_fedavg(folder, capsys):
    args = command("fedprox")
    assert args[args.index("--federation.rounds") + 1] == "2"
    prox = run(args, folder / "runs" / "fedprox-digits")
    assert prox["rounds"] == 2 and 0.0 <= prox["client_accuracy_mean"] <= 1.0
    assert "does not take" in capsys.readouterr().err  # the switch from FedGMI names what it drops
    short = ["--config", "configs/pm_digits.yaml", "--federation.rounds", "2", "--algorithm.init_args.local_epochs", "2"]
    run(["fit", *short, "--algorithm", "fedprox.FedProx", "--algorithm.init_args.mu", "0.0",
         "--output_dir", "prox0"], folder / "prox0")
    run(["fit", *short, "--algorithm", "FedAvg", "--output_dir", "avg"], folder / "avg")
    for a, b in zip(global_state(folder / "prox0"), global_state(folder / "avg")):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(global_state(folder / "runs" / "fedprox-digits")[0], global_state(folder / "avg")[0])


def test_the_documented_kmeans_command_runs_and_clusters(folder):
    args = command("fedkmeans")
    assert args[args.index("--federation.rounds") + 1] == "2"
    metrics = run(args, folder / "runs" / "fedkmeans-digits")
    assert metrics["rounds"] == 2 and metrics["assignment_accuracy"] > 0.5 and metrics["nmi"] > 0.3
    assert metrics["train_inertia"] > 0
