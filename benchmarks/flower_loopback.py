"""What a Flower round costs against an in-process round: one config run in process and on a
loopback federation (a SuperLink and SuperNodes on 127.0.0.1, long-lived ClientApp processes),
same seed. Prints JSON.

    python benchmarks/flower_loopback.py > benchmarks/results/flower_loopback.json

(with ``FEDGMI_DATA_DIR`` set as for ``fedgmi fit``; ``--config``, ``--nodes``, ``--isolation``,
``--overrides`` and ``--flower-poll`` change the setting, ``--help`` lists them). The SuperNodes
run through :mod:`fedgmi.flower.supernode` (Flower's SuperNode with idle waits of 0.1 s
instead of 3 s) unless ``--flower-poll``.

"Loop time" is the same quantity both ways: metrics.json's ``wall_time_s`` (the federation loop:
initialisation stage, rounds, evaluations; not the process start, the config parsing or the
data loading before it). Keys: ``flower_loop_s``, ``in_process_loop_s``, ``loop_time_ratio``
(their ratio), ``flower_total_s`` / ``in_process_total_s`` (wall clock of ``flwr run`` after
the federation is up, and of ``fedgmi fit``), ``flower_cpu_s`` / ``in_process_cpu_s`` (CPU
seconds, user + system, of the federation's processes from their start to the run's end by
program, sampled every 0.5 s, and of ``fedgmi fit``: what a shared machine's load changes
little), ``flower_breakdown`` (process isolation: where the Flower loop's time went, see
:func:`breakdown`), ``max_abs_param_diff`` (final global
state, Flower against in process), ``metrics_differing`` (metrics.json's numbers that differ,
wall time aside: key -> [Flower, in process]), the setting (config, nodes, isolation,
overrides, torch threads) and the machine's load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.flower.loopback import Loopback  # the tests' harness: every process stopped


def children_cpu_s() -> float:
    """CPU seconds (user + system) of this process's finished children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def in_process(config: str, overrides: list[str], out: Path, timeout: float) -> tuple[float, float]:
    """``fedgmi fit`` (one torch thread, as the nodes); returns its wall-clock and CPU seconds.

    Raises:
        RuntimeError: the run failed (its last output lines).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    started, cpu = time.perf_counter(), children_cpu_s()
    done = subprocess.run([sys.executable, "-m", "fedgmi", "fit", "--config", config, *overrides, "--output_dir",
                           str(out)], env=env, cwd=REPO, timeout=timeout, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"fedgmi fit failed: {done.stderr[-2000:]}")
    return time.perf_counter() - started, children_cpu_s() - cpu


def process_tree_cpu(roots: set[int], seen: dict[int, tuple[str, float]]) -> None:
    """Record in ``seen`` (pid -> (program, CPU seconds)) every live process under ``roots``
    (descendants found through their parent ids, e.g. the ServerApp under the SuperLink's
    SuperExec); a process's CPU time only grows, so the last sample is its total."""
    parent, stat = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            parent[int(entry.name)] = int(fields[1])
            stat[int(entry.name)] = (cmd, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    for pid, (cmd, cpu) in stat.items():
        ancestor = pid
        while ancestor not in roots and ancestor > 1:
            ancestor = parent.get(ancestor, 0)
        if ancestor in roots:
            words = [Path(w.decode(errors="replace")).name for w in cmd if w]
            program = next((w for w in words if w.startswith(("flower-", "flwr")) or w == "fedgmi.flower.worker"),
                           words[0] if words else "?")
            seen[pid] = (program, cpu)


def cpu_by_program(seen: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds summed by program, and their ``total``."""
    out: dict[str, float] = {}
    for program, cpu in seen.values():
        out[program] = out.get(program, 0.0) + cpu
    return {**{k: round(v, 1) for k, v in sorted(out.items())}, "total": round(sum(out.values()), 1)}


DONE = re.compile(r"fedgmi\.flower\.worker: done: pulled in ([\d.]+) s, ran in ([\d.]+) s, replied in ([\d.]+) s")


def message_times(log: str) -> list[list[float]]:
    """Per message a long-lived ClientApp process served (from its log): seconds pulling the
    message and context from the SuperNode, running the ClientApp, pushing the reply."""
    return [[float(x) for x in m.groups()] for m in DONE.finditer(log)]


def breakdown(nodes: list[list[list[float]]], flower_loop_s: float) -> dict:
    """Where the Flower loop's time went: per node, messages and seconds pulling, running and
    replying (all messages), and the first message's run apart (it builds the scenario and
    strategy, while the server looks for its nodes, before its loop clock starts);
    ``nodes_busy_s``, the seconds some node was busy with a later message (the n-th messages of
    the nodes run side by side: the sum over n of the slowest), and ``outside_nodes_s``, the rest
    of the loop: the server's own work and Flower's transfers and polling between the processes."""
    per_node = [{"messages": len(rows), "pull_s": round(sum(r[0] for r in rows), 2),
                 "app_s": round(sum(r[1] for r in rows), 2), "reply_s": round(sum(r[2] for r in rows), 2),
                 "first_app_s": round(rows[0][1], 2) if rows else 0.0} for rows in nodes]
    busy = sum(max(sum(r) for r in same) for same in zip(*(rows[1:] for rows in nodes)))
    return {"nodes": per_node, "nodes_busy_s": round(busy, 2), "outside_nodes_s": round(flower_loop_s - busy, 2)}


def on_flower(config: str, overrides: list[str], out: Path, nodes: list[str], isolation: str,
              timeout: float, fast_poll: bool = True) -> tuple[float, list[list[list[float]]], dict[str, float]]:
    """The same run with ``flwr run`` on a loopback federation; returns the seconds from
    ``flwr run`` to its end, under process isolation each node's :func:`message_times`, and the
    CPU seconds of the federation's processes by program (:func:`cpu_by_program`).

    Raises:
        RuntimeError: the run failed or did not finish in ``timeout`` s (the end of its log).
    """
    with Loopback(out.parent / "federation", nodes, isolation=isolation, fast_poll=fast_poll) as fed:
        args = " ".join([*overrides, "--output_dir", str(out)])
        started = time.perf_counter()
        proc = fed.run(f"config='{config}' overrides='{args}'", timeout)
        seen: dict[int, tuple[str, float]] = {}
        while proc.poll() is None:
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"flwr run did not finish in {timeout} s: {fed.log('flwr-run')[-2000:]}")
            process_tree_cpu({p.pid for p in fed.procs.values()}, seen)
            time.sleep(0.5)
        seconds = time.perf_counter() - started
        if not (out / "metrics.json").is_file():
            raise RuntimeError(f"flwr run wrote no metrics: {fed.log('flwr-run')[-2000:]}")
        workers = [message_times(fed.log(f"worker{i}")) for i in range(len(nodes))] if isolation == "process" else []
    return seconds, workers, cpu_by_program(seen)


def compare(a: Path, b: Path) -> tuple[float, dict[str, list]]:
    """Largest absolute difference of the final global state, and metrics.json's numbers (wall
    time aside) that differ (key -> [value in ``a``, value in ``b``]), between runs ``a`` and ``b``."""
    import torch

    sa, sb = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["strategy"] for d in (a, b))
    diff = max(float((x - y).abs().max()) for x, y in zip(sa["global_state"], sb["global_state"]))
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    differ = {k: [ma.get(k), v] for k, v in mb.items()
              if isinstance(v, (int, float)) and k != "wall_time_s" and ma.get(k) != v}
    return diff, differ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/pm_digits.yaml")
    parser.add_argument("--nodes", nargs="+", default=["0-4", "5-9"], help="client-ids of each SuperNode")
    parser.add_argument("--isolation", choices=["process", "subprocess"], default="process",
                        help="process: one long-lived ClientApp process a node (fedgmi.flower.worker); "
                             "subprocess: Flower's default, a fresh ClientApp process a message")
    parser.add_argument("--overrides", default="", help="more fedgmi fit arguments, for both runs")
    parser.add_argument("--flower-poll", action="store_true",
                        help="SuperNodes as flower-supernode (idle waits of 3 s) instead of fedgmi.flower.supernode "
                             "(0.1 s)")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds each run may take")
    args = parser.parse_args()
    overrides = args.overrides.split()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="flower_loopback_") as tmp:
        local, flower = Path(tmp) / "local", Path(tmp) / "flower"
        in_process_total, in_process_cpu = in_process(args.config, overrides, local, args.timeout)
        flower_total, workers, flower_cpu = on_flower(args.config, overrides, flower, args.nodes, args.isolation,
                                                      args.timeout, fast_poll=not args.flower_poll)
        diff, differ = compare(flower, local)
        loops = [json.loads((d / "metrics.json").read_text())["wall_time_s"] for d in (flower, local)]
    print(json.dumps({
        "config": args.config, "nodes": args.nodes, "isolation": args.isolation, "overrides": args.overrides,
        "supernode": "flower-supernode" if args.flower_poll else "fedgmi.flower.supernode (idle waits 0.1 s)",
        "torch_threads": 1, "flower_loop_s": round(loops[0], 2), "in_process_loop_s": round(loops[1], 2),
        "loop_time_ratio": round(loops[0] / loops[1], 3), "flower_total_s": round(flower_total, 2),
        "in_process_total_s": round(in_process_total, 2), "flower_cpu_s": flower_cpu,
        "in_process_cpu_s": round(in_process_cpu, 1), "flower_breakdown": breakdown(workers, loops[0]) if workers else None,
        "max_abs_param_diff": diff, "metrics_differing": differ,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()], "cpu_count": os.cpu_count(),
    }, indent=1))


if __name__ == "__main__":
    main()
