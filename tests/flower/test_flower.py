"""fedgmi on Flower: wire records, run/node configs, and a SuperLink with two SuperNodes on
127.0.0.1 (a 3-round FedGMI run compared with the in-process loop; a node killed mid-round)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr", reason="Flower is not installed (pip install -e \".[flower]\")")

from fedgmi.errors import ConfigError
from fedgmi.federated.messages import ClientTask
from fedgmi.flower import wire
from fedgmi.flower.runtime import RunSettings, node_clients
from tests.flower.loopback import REPO, Loopback

#: A small FedGMI on digits: 4 clients, 1 local epoch (the rest as configs/pm_digits.yaml).
SMALL = "--scenario.num_clients 4 --algorithm.init_args.local_epochs 1"


def test_task_and_reply_cross_the_wire_exactly() -> None:
    """A task and a reply survive Flower's records bit for bit; the tensor payload is
    fedgmi's byte count."""
    from flwr.app import RecordDict

    task = ClientTask(2, 3, 12345, (torch.randn(7), torch.randn(5)), {"phase": "warmup", "lr": 0.5},
                      algorithm="FedGMI")
    content = RecordDict()
    wire.add_task(content, task, {"pi": torch.tensor([0.25, 0.75])})
    back = wire.task_from(content, 3)
    assert back.settings == task.settings and back.seed == task.seed and back.round == 2
    assert all(torch.equal(a, b) for a, b in zip(back.global_state, task.global_state))
    assert wire.payload_bytes(content, (wire.GLOBAL,)) == task.bytes_down
    reply = task.reply(40, [torch.randn(7), None], [30.0, 10.0], {"neg_elbo": 1.5})
    out = RecordDict()
    wire.add_reply(out, reply, {"pi": torch.tensor([0.5, 0.5])}, "d")
    got, state = wire.reply_from(out, task)
    assert got.updates[1] is None and torch.equal(got.updates[0], reply.updates[0])
    assert got.metrics == {"neg_elbo": 1.5} and torch.equal(state["pi"], torch.tensor([0.5, 0.5]))
    assert wire.payload_bytes(out, (wire.UPDATES, wire.WEIGHTS)) == reply.bytes_up == got.bytes_up


def test_node_and_run_configs_say_what_is_wrong() -> None:
    assert node_clients({"client-ids": "0,2-3"}, 5) == [0, 2, 3]
    assert node_clients({"partition-id": 1, "num-partitions": 2}, 5) == [1, 3]
    with pytest.raises(ConfigError, match=r"client-ids = '7'.*allowed: ids 0 \.\. 4"):
        node_clients({"client-ids": "7"}, 5)
    with pytest.raises(ConfigError, match="partition-id = 3 must be an integer in 0 .. 1"):
        node_clients({"partition-id": 3, "num-partitions": 2}, 5)
    with pytest.raises(ConfigError, match="names no clients"):
        node_clients({}, 5)
    with pytest.raises(ConfigError, match="unknown key 'rounds'"):
        RunSettings.from_run_config({"rounds": 3})
    with pytest.raises(ConfigError, match="round-timeout = -1"):
        RunSettings.from_run_config({"round-timeout": -1})


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def _fit(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m fedgmi fit ...`` in process (one torch thread, as the Flower nodes)."""
    return subprocess.run([sys.executable, "-m", "fedgmi", "fit", *args], env=_env(), cwd=REPO, timeout=timeout, check=False,
                          capture_output=True, text=True)


def _wait(proc: subprocess.Popen, timeout: float, fed: Loopback) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"flwr run did not finish in {timeout} s; its log ends with:\n{fed.log('flwr-run')[-3000:]}")


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """A SuperLink and two SuperNodes (clients 0-1 and 2-3) on 127.0.0.1, stopped at the end."""
    with Loopback(tmp_path_factory.mktemp("flower"), ["0-1", "2-3"]) as fed:
        yield fed


def check_equals_in_process(fed: Loopback, start: Callable[[str], subprocess.Popen], overrides: str,
                            tmp_path: Path) -> None:
    """``start(run_config)`` (a ``flwr run`` on ``fed``) with ``overrides`` ends with the global
    state (largest absolute difference <= 1e-6; measured 0.0), client proportions and metrics of
    ``fedgmi fit`` with the same overrides, and Flower's payloads are fedgmi's byte counts."""
    flower_dir, local_dir = tmp_path / "flower", tmp_path / "local"
    proc = start(f"overrides='{overrides} --output_dir {flower_dir}'")
    done = _fit("--config", "configs/pm_digits.yaml", *overrides.split(), "--output_dir", str(local_dir))
    assert done.returncode == 0, done.stderr[-2000:]
    _wait(proc, 240, fed)
    assert proc.returncode == 0 and (flower_dir / "metrics.json").is_file(), fed.log("flwr-run")[-3000:]
    a = torch.load(flower_dir / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(local_dir / "checkpoints" / "last.ckpt", weights_only=True)
    diff = max(float((x - y).abs().max()) for x, y in zip(a["strategy"]["global_state"], b["strategy"]["global_state"]))
    assert diff <= 1e-6
    for c, state in b["strategy"]["client_state"].items():
        assert torch.allclose(a["strategy"]["client_state"][c]["pi"], state["pi"], atol=1e-6)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (flower_dir, local_dir))
    for key, value in mb.items():
        if isinstance(value, float) and key != "wall_time_s":
            assert ma[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key
    report = json.loads((flower_dir / "flower.json").read_text())
    assert report["fedgmi_bytes_up"] == mb["bytes_up_rounds"] and report["fedgmi_bytes_down"] == mb["bytes_down_rounds"]
    assert report["flower_bytes_up"] > report["flower_payload_bytes_up"] == mb["bytes_up_rounds"]


def test_deployment_run_equals_in_process_run(federation: Loopback, tmp_path: Path) -> None:
    """3 rounds of FedGMI through a SuperLink and two SuperNodes end with the in-process run (see
    :func:`check_equals_in_process`)."""
    check_equals_in_process(federation, lambda run_config: federation.run(run_config, timeout=240),
                            f"{SMALL} --federation.rounds 3", tmp_path)


@pytest.fixture(scope="module")
def process_federation(tmp_path_factory):
    """As ``federation``, with ``--isolation process`` and a long-lived ClientApp process a node."""
    with Loopback(tmp_path_factory.mktemp("flower-process"), ["0-1", "2-3"], isolation="process") as fed:
        yield fed


@pytest.mark.slow  # waits a round-timeout by design, then resumes: about 2 minutes each
@pytest.mark.parametrize("isolation", ["subprocess", "process"])
def test_node_killed_mid_round(isolation: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """A SuperNode killed while it trains round 1 (with its long-lived ClientApp process, under
    process isolation): the round ends with the other node's clients after round-timeout, the
    evaluation scores the clients of the node still there and counts the others, the run
    finishes, and its checkpoint resumes with ``fedgmi fit``."""
    federation: Loopback = request.getfixturevalue("federation" if isolation == "subprocess" else "process_federation")
    out = tmp_path / "crash"
    watched = "node1" if isolation == "subprocess" else "worker1"  # where node1's round-1 training shows
    start = len(federation.log(watched))  # the module's earlier run may have written there too
    # a long-lived ClientApp process trains 1 epoch in well under a second: 20 keep it busy when killed
    epochs = " --algorithm.init_args.local_epochs 20" if isolation == "process" else ""
    proc = federation.run(f"overrides='{SMALL}{epochs} --federation.rounds 2 --output_dir {out}' round-timeout=45.0",
                          timeout=240)
    deadline = time.monotonic() + 180

    def training_round_1() -> bool:  # node1 received its round-1 tasks and started its ClientApp
        text = federation.log(watched)[start:]
        if isolation == "process":
            return "train message (group 1)" in text
        return "ROUND 1]" in text and "Start `flwr-clientapp`" in text[text.index("ROUND 1]"):]

    while not training_round_1() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert training_round_1(), federation.log("flwr-run")[-3000:]
    federation.kill("node1")  # SIGKILL: the node and its ClientApp process(es) vanish mid-round
    _wait(proc, 180, federation)
    log = " ".join(federation.log("flwr-run").split())
    assert proc.returncode == 0, log[-3000:]
    # no reply in time, or Flower's error reply for a node gone ("Node Unavailable")
    assert "round 1: client 2 on node" in log and "did not reply within round-timeout = 45 s; left out" in log \
        or "round 1: client 2 failed on node" in log, log[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rounds"] == 2 and metrics["clients_failed"] >= 2 and metrics["rounds_skipped"] == 0
    # node1 (clients 2-3) is still gone at the evaluation: node0's clients are scored, node1's counted
    assert metrics["clients_unevaluated"] == 2 and 0 <= metrics["client_accuracy_mean"] <= 1, metrics
    assert "step 'evaluate': node" in log and "left out" in log
    resumed = _fit("--config", str(out / "config.yaml"), "--ckpt_path", str(out / "checkpoints" / "last.ckpt"),
                   "--federation.rounds", "3")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text())["rounds"] == 3


@pytest.mark.slow  # a SuperLink, two SuperNodes and a refused run: 40-100 s under load
def test_client_claimed_by_two_nodes_stops_the_run(tmp_path: Path) -> None:
    """Nodes holding clients 0-1 and 1-3: the ServerApp refuses client 1 with one line naming
    both nodes, before round 0, and writes no metrics."""
    with Loopback(tmp_path / "flower", ["0-1", "1-3"]) as fed:
        proc = fed.run(f"overrides='{SMALL} --federation.rounds 1 --output_dir {tmp_path / 'run'}' node-timeout=60.0",
                       timeout=200)
        _wait(proc, 200, fed)
        lines = [line for line in fed.log("flwr-run").splitlines() if line.startswith("fedgmi: error:")]
    assert len(lines) == 1, fed.log("flwr-run")[-3000:]
    assert re.fullmatch(r"fedgmi: error: client 1 is claimed by Flower nodes \d+ and \d+; .*", lines[0])
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow  # Ray's start-up alone takes tens of seconds
def test_simulation_engine_equals_in_process_run(tmp_path: Path) -> None:
    """2 rounds on Flower's simulation engine (one virtual SuperNode per client) end with the
    in-process run's global state."""
    overrides = f"{SMALL} --federation.rounds 2"
    sim = subprocess.run([sys.executable, "-m", "fedgmi.flower", "simulate", "--config", "configs/pm_digits.yaml",
                          "--overrides", f"{overrides} --output_dir {tmp_path / 'sim'}"], env=_env(), cwd=REPO,
                         timeout=400, capture_output=True, text=True, check=False)
    assert sim.returncode == 0 and (tmp_path / "sim" / "metrics.json").is_file(), (sim.stdout + sim.stderr)[-3000:]
    done = _fit("--config", "configs/pm_digits.yaml", *overrides.split(), "--output_dir", str(tmp_path / "local"))
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = (torch.load(tmp_path / d / "checkpoints" / "last.ckpt", weights_only=True) for d in ("sim", "local"))
    diff = max(float((x - y).abs().max()) for x, y in zip(a["strategy"]["global_state"], b["strategy"]["global_state"]))
    assert diff <= 1e-6
