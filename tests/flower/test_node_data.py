"""A node with its own data file: the file format and its errors, and a loopback deployment of two
SuperNodes, each started with only its own file, whose server has no data folder at all, ending
with the in-process run's metrics on the same split."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr", reason="Flower is not installed (pip install -e \".[flower]\")")

from fedgmi.errors import ConfigError
from fedgmi.flower.__main__ import split_nodes
from fedgmi.flower.node_data import FORMAT, load_node_data
from fedgmi.flower.runtime import data_file
from tests.flower.loopback import BIN, REPO, Loopback, free_port

SMALL = "--scenario.num_clients 4 --algorithm.init_args.local_epochs 1"


def test_split_files_hold_only_their_clients_and_read_back(tmp_path: Path) -> None:
    paths = split_nodes("configs/pm_digits.yaml", SMALL, ["0-1", "2-3"], tmp_path)
    first, second = (load_node_data(str(p)) for p in paths)
    assert first.client_ids == [0, 1] and second.client_ids == [2, 3]
    assert first.image_shape == (1, 8, 8) and first.num_classes == 10
    assert first.clients[0].truth is not None and first.clients[0].truth.num_components == 3
    described = first.describe()
    assert described["train-sizes"] == [len(first.clients[c].data.x_train) for c in (0, 1)]
    assert set(described) == {"image-shape", "num-classes", "train-sizes", "has-truth", "component-names"}
    plain = load_node_data(str(split_nodes("configs/pm_digits.yaml", SMALL, ["0-3"], tmp_path / "plain",
                                           truth=False)[0]))
    assert all(c.truth is None for c in plain.clients.values()) and not plain.describe()["has-truth"]


@pytest.mark.parametrize("content, message", [
    (None, "is not a file"),
    ({"format": "other"}, "is not a fedgmi node file"),
    ({"format": FORMAT, "image_shape": [1, 2, 2], "num_classes": 2,
      "clients": {0: {"x_train": torch.zeros(3, 4), "y_train": torch.zeros(3).long(), "x_test": torch.zeros(2, 5),
                      "y_test": torch.zeros(2).long()}}}, "client 0's x_test (2, 5) and y_test (2,) must be (n, 4)"),
    ({"format": FORMAT, "image_shape": [1, 2, 2], "num_classes": 2,
      "clients": {0: {"x_train": torch.zeros(3, 4), "y_train": torch.zeros(3).long(), "x_test": torch.zeros(2, 4),
                      "y_test": torch.zeros(2).long(), "z_train": torch.zeros(3).long()}}}, "the ground truth is"),
])
def test_a_bad_node_file_is_refused_in_one_line(tmp_path: Path, content, message: str) -> None:
    path = tmp_path / "node.pt"
    if content is not None:
        torch.save(content, path)
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        load_node_data(str(path))
    assert "\n" not in str(err.value) and str(err.value).startswith(f"node config: data-file = {str(path)!r}")
    with pytest.raises(ConfigError, match="give one"):
        data_file({"data-file": str(path), "client-ids": "0-1"})


def _fit(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedgmi", "fit", *args], env=env, cwd=REPO, timeout=600,
                          capture_output=True, text=True, check=False)


@pytest.mark.slow  # a SuperLink, two SuperNodes and a 2-round FedGMI run on digits: 2-4 minutes under load
def test_nodes_with_their_own_data_train_as_in_process_and_the_server_reads_no_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each SuperNode gets only its own node file; every process of the federation runs with
    FEDGMI_DATA_DIR pointing at a folder that does not exist (so neither the server nor a node
    could build a scenario); the run ends with the in-process run's metrics on the same split."""
    files = split_nodes("configs/pm_digits.yaml", SMALL, ["0-1", "2-3"], tmp_path / "nodes")
    overrides = f"{SMALL} --federation.rounds 2 --federation.unseen_fraction 0.25"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    local = _fit("--config", "configs/pm_digits.yaml", *overrides.split(), "--output_dir", str(tmp_path / "local"),
                 env=env)
    assert local.returncode == 0, local.stderr[-2000:]
    absent = tmp_path / "no-data-here"
    monkeypatch.setenv("FEDGMI_DATA_DIR", str(absent))  # Loopback copies os.environ: no data folder anywhere
    with Loopback(tmp_path / "flower", []) as fed:
        for i, path in enumerate(files):
            fed.start(f"node{i}", [str(BIN / "flower-supernode"), "--insecure", "--superlink",
                                   f"127.0.0.1:{fed.port}", "--port", str(free_port()),
                                   "--node-config", f"data-file='{path}'"])
        out = tmp_path / "flower-run"
        proc = fed.run(f"overrides='{overrides} --output_dir {out}' node-timeout=120.0", timeout=600)
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(1)
        log = fed.log("flwr-run")
    assert not absent.exists()
    assert (out / "metrics.json").is_file(), log[-3000:]
    assert "the server holds no client's data" in log
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (out, tmp_path / "local"))
    for key, value in mb.items():
        if isinstance(value, float) and key != "wall_time_s":
            assert ma[key] == pytest.approx(value, rel=1e-6, abs=1e-6, nan_ok=True), key
    assert ma["client_accuracy_mean"] > 0.15 and ma["assignment_accuracy"] == mb["assignment_accuracy"]
