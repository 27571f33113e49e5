"""``python -m fedgmi.flower simulate --config FILE [--overrides "..."] [--num-supernodes N]``: a
fedgmi config on Flower's simulation engine (see :mod:`fedgmi.flower.simulation`).

``python -m fedgmi.flower split --config FILE [--overrides "..."] --nodes 0-4 5-9 --out DIR``:
the clients of a simulated scenario written as one node data file per node
(``DIR/node0.pt``, ...; :mod:`fedgmi.flower.node_data`), for a loopback deployment of the same
split."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedgmi.errors import ConfigError


def split_nodes(config: str, overrides: str, nodes: list[str], out: Path, truth: bool = True) -> list[Path]:
    """Write ``out/node<i>.pt`` for each node's client ids (see the module docstring).

    Raises:
        ConfigError: a bad config, a bad or repeated client id (one line).
    """
    import io
    import shlex

    import torch

    from fedgmi.atomic import write_atomic
    from fedgmi.flower.node_data import node_file
    from fedgmi.flower.runtime import RunSettings, parse_range, resolve_config
    from fedgmi.run_config import build_parser, instantiate

    parser = build_parser()
    cfg = parser.parse_args(RunSettings(resolve_config(config), tuple(shlex.split(overrides))).fit_args(server=False))
    _, scenario, _ = instantiate(parser, cfg)
    groups = [parse_range(f"--nodes[{i}]", text, len(scenario.clients)) for i, text in enumerate(nodes)]
    seen = [c for g in groups for c in g]
    if len(seen) != len(set(seen)):
        raise ConfigError(f"--nodes = {' '.join(nodes)}: a client is given to two nodes; each client belongs to one")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ids in enumerate(groups):
        buffer = io.BytesIO()
        torch.save(node_file(scenario, ids, truth), buffer)
        paths.append(write_atomic(out / f"node{i}.pt", buffer.getvalue()))
    return paths


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 on bad input, with one line on stderr)."""
    parser = argparse.ArgumentParser(prog="python -m fedgmi.flower")
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="run a fedgmi config on Flower's simulation engine")
    sim.add_argument("--config", required=True, help="fedgmi YAML config")
    sim.add_argument("--overrides", default="", help='more fedgmi fit arguments, e.g. "--federation.rounds 3"')
    sim.add_argument("--ckpt-path", default="", help="resume from this checkpoint")
    sim.add_argument("--round-timeout", type=float, default=600.0, help="seconds to wait for a round's replies")
    sim.add_argument("--num-supernodes", type=int, default=None, help="virtual nodes (default: one per client)")
    sim.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per ClientApp run")
    split = sub.add_parser("split", help="write one node data file per node from a simulated scenario")
    split.add_argument("--config", required=True, help="fedgmi YAML config")
    split.add_argument("--overrides", default="", help="more fedgmi fit arguments (scenario settings)")
    split.add_argument("--nodes", nargs="+", required=True, help="client ids of each node, e.g. 0-4 5-9")
    split.add_argument("--out", required=True, help="folder of the node files")
    split.add_argument("--no-truth", action="store_true", help="leave the inherent-distribution labels out")
    args = parser.parse_args(argv)
    if args.command == "split":
        try:
            for path in split_nodes(args.config, args.overrides, args.nodes, Path(args.out), not args.no_truth):
                print(path)
        except ConfigError as err:
            print(f"fedgmi: error: {err}", file=sys.stderr)
            return 2
        return 0
    try:
        from fedgmi.flower.simulation import simulate
    except ImportError as err:
        from fedgmi.flower import FLOWER_MISSING
        print(f"fedgmi: error: {FLOWER_MISSING} ({err})", file=sys.stderr)
        return 2
    run_config = {"config": args.config, "overrides": args.overrides, "ckpt-path": args.ckpt_path,
                  "round-timeout": args.round_timeout}
    try:
        simulate(run_config, args.num_supernodes, args.num_cpus)
    except ConfigError as err:
        print(f"fedgmi: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
