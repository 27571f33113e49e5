"""The same run on one process and on several CPU processes (gloo): is the global model the
same, and how long does each take? Prints JSON.

    python benchmarks/distributed.py --config configs/pm_mnist_paper.yaml --rounds 3 --devices 2

Runs ``fedgmi fit --config CONFIG --federation.rounds R --fabric.accelerator cpu`` with
``--fabric.devices 1`` and then ``--fabric.devices N``, one after the other, every process with
``--threads`` torch threads (OMP_NUM_THREADS; default 1). The thread count must be the same:
a matmul's float32 sums are split by thread, so one process of 2 threads and two of 1 differ by
rounding, which local training then grows (measured: 9e-4 after 3 rounds of pm_mnist).

Keys: ``max_abs_param_diff`` (largest absolute difference of the final global component
parameters), ``metrics_equal`` and ``max_abs_metric_diff`` (metrics.json's numbers except
``wall_time_s``), ``seconds`` (whole process, launch to exit) and ``loop_seconds`` (the
federated loop, metrics.json's ``wall_time_s``: initialisation, rounds and evaluation) for each
process count, and ``speedup`` (one process's seconds over N processes').
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from kill_resume import final  # benchmarks/kill_resume.py: metrics and parameters of a run


def fit(config: str, rounds: int, devices: int, threads: int, out: Path, extra: list[str]) -> float:
    """Seconds of one ``fedgmi fit`` run on ``devices`` CPU processes of ``threads`` threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
    cmd = [sys.executable, "-m", "fedgmi", "fit", "--config", config, "--federation.rounds", str(rounds),
           "--federation.eval_every", str(rounds), "--fabric.accelerator", "cpu", "--fabric.devices", str(devices),
           "--output_dir", str(out), *extra]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/pm_mnist_paper.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--devices", type=int, default=2, help="processes of the second run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every process")
    parser.add_argument("--workdir", default="runs/distributed")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `fedgmi fit` arguments")
    args = parser.parse_args()
    runs = {}
    for devices in (1, args.devices):
        out = Path(args.workdir) / f"devices{devices}"
        seconds = fit(args.config, args.rounds, devices, args.threads, out, args.extra)
        metrics, params = final(out)
        loop = json.loads((out / "metrics.json").read_text())["wall_time_s"]
        runs[devices] = (seconds, loop, metrics, params)
    (s1, l1, m1, p1), (sn, ln, mn, pn) = runs[1], runs[args.devices]
    print(json.dumps({
        "config": args.config, "rounds": args.rounds, "devices": args.devices,
        "threads_per_process": args.threads,
        "max_abs_param_diff": max(float((a - b).abs().max()) for a, b in zip(p1, pn)),
        "metrics_equal": m1 == mn,
        "max_abs_metric_diff": max(abs(m1[k] - mn.get(k, float("nan"))) for k in m1),
        "seconds": {"1": round(s1, 1), str(args.devices): round(sn, 1)},
        "loop_seconds": {"1": round(l1, 1), str(args.devices): round(ln, 1)},
        "speedup": round(s1 / sn, 3), "loop_speedup": round(l1 / ln, 3),
    }, indent=2))


if __name__ == "__main__":
    main()
