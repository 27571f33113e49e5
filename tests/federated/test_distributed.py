"""Clients spread over two CPU processes (gloo) give the global model of one process."""

import os
import subprocess
import sys
from pathlib import Path

import lightning
import torch

from fedgmi.federated.distributed import any_rank, gather, my_slice

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--config", str(ROOT / "configs" / "pm_digits.yaml"), "--federation.rounds", "3",
        "--federation.eval_every", "3", "--scenario.num_clients", "6", "--fabric.accelerator", "cpu",
        "--algorithm.init_args.local_epochs", "2", "--algorithm.init_args.warmup_rounds", "2",
        "--algorithm.init_args.topic_restarts", "3"]


def fit(out: Path, devices: int, launcher: tuple[str, ...] = (sys.executable, "-m", "fedgmi")) -> list[torch.Tensor]:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launcher, "fit", *ARGS, "--fabric.devices", str(devices), "--output_dir", str(out)],
                          check=False, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["strategy"]["global_state"]


def test_two_processes_give_the_one_process_global_model(tmp_path):
    one, two = fit(tmp_path / "one", 1), fit(tmp_path / "two", 2)
    assert max(float((a - b).abs().max()) for a, b in zip(one, two)) <= 1e-5
    assert (tmp_path / "two" / "metrics.json").is_file()


def test_fabric_run_launcher_gives_the_one_process_global_model(tmp_path):
    fabric_cli = (str(Path(sys.executable).parent / "fabric"), "run", "--accelerator", "cpu", "--devices", "2",
                  str(ROOT / "fedgmi" / "__main__.py"))  # `fabric run` starts the processes itself
    one, launched = fit(tmp_path / "one", 1), fit(tmp_path / "fabric-run", 2, fabric_cli)
    assert max(float((a - b).abs().max()) for a, b in zip(one, launched)) <= 1e-5


def test_single_process_helpers_are_identities():
    fabric = lightning.Fabric(accelerator="cpu", devices=1)
    assert my_slice(fabric, [3, 4, 5]) == [3, 4, 5] and gather(fabric, "x") == ["x"]
    assert any_rank(fabric, True) and not any_rank(fabric, False)
