"""Resuming a killed run exactly (the same final state, and the same rows in metrics.csv,
logs/metrics.csv and the W&B history as the uninterrupted run, time columns aside), stopping on
SIGTERM with a checkpoint, and a second signal stopping at once (real digits data)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from fedgmi.cli import main
from tests.helpers import wandb_history

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--config", str(ROOT / "configs" / "pm_digits.yaml"), "--federation.rounds", "8",
         "--federation.eval_every", "4", "--scenario.num_clients", "6",
         "--algorithm.init_args.local_epochs", "2", "--algorithm.init_args.warmup_rounds", "2",
         "--algorithm.init_args.topic_restarts", "3"]


def start_fit(out: Path, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}  # its own W&B service, not ours
    env.update(WANDB_MODE="offline", PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "fedgmi", "fit", *SMALL, "--output_dir", str(out), *extra],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path.name} appeared: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"{path.name} did not appear"
        time.sleep(0.02)


def final_state(run: Path) -> tuple[dict, list[torch.Tensor]]:
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("wall_time_s")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    return metrics, ckpt["strategy"]["global_state"]


def rows_without_time(path: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if "wall_time" not in k and not k.startswith("time/")}
            for row in csv.DictReader(path.open())]


def test_sigkill_then_resume_ends_exactly_like_the_uninterrupted_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(["fit", *SMALL, "--logging.wandb", "true", "--output_dir", str(tmp_path / "whole")]) == 0
    proc = start_fit(tmp_path / "killed", "--logging.wandb", "true")
    wait_for(tmp_path / "killed" / "checkpoints" / "round-0005.ckpt", proc)  # after the row of round 4
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(tmp_path / "killed" / "checkpoints" / "last.ckpt", weights_only=True)["round"]
    assert 5 <= killed_at < 8
    assert main(["fit", "--config", str(tmp_path / "killed" / "config.yaml"),
                 "--ckpt_path", str(tmp_path / "killed" / "checkpoints" / "last.ckpt")]) == 0
    whole, resumed = final_state(tmp_path / "whole"), final_state(tmp_path / "killed")
    assert resumed[0] == whole[0]
    for a, b in zip(whole[1], resumed[1]):
        assert torch.equal(a, b)
    rounds = [line.split(",")[0] for line in (tmp_path / "killed" / "metrics.csv").read_text().splitlines()]
    assert rounds == ["round", "4", "8"]  # rows written after the checkpoint are not repeated
    for name in ("metrics.csv", "logs/metrics.csv"):  # every file holds the uninterrupted run's rows
        assert rows_without_time(tmp_path / "killed" / name) == rows_without_time(tmp_path / "whole" / name), name
    assert len(list((tmp_path / "killed" / "wandb").glob("offline-run-*"))) == 2  # two sessions, one run id
    whole_history, resumed_history = wandb_history(tmp_path / "whole"), wandb_history(tmp_path / "killed")
    assert sorted(whole_history) == [4, 8] and resumed_history == whole_history


def test_sigterm_writes_a_checkpoint_and_exits_143_with_the_resume_command(tmp_path):
    proc = start_fit(tmp_path / "run")
    wait_for(tmp_path / "run" / "checkpoints" / "round-0001.ckpt", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "resume with: fedgmi fit --config" in err.splitlines()[-1]
    stopped = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert 1 <= stopped["round"] < 8 and stopped["loop"]["next_round"] == stopped["round"]


def test_a_second_sigint_stops_at_once_with_one_line_and_the_resume_command(tmp_path):
    proc = start_fit(tmp_path / "run", "--federation.rounds", "40", "--algorithm.init_args.local_epochs", "30")
    wait_for(tmp_path / "run" / "checkpoints" / "round-0001.ckpt", proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and lines[-1].startswith("fedgmi: SIGINT again: stopped at once"), err
    assert f"resume with: fedgmi fit --config {tmp_path / 'run' / 'config.yaml'} --ckpt_path" in lines[-1]
    assert len([ln for ln in lines if "SIGINT" in ln]) == 1  # (the first signal's note went to stdout)
