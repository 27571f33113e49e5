"""``python -m fedgmi.flower simulate --config FILE [--overrides "..."] [--num-supernodes N]``: a
fedgmi config on Flower's simulation engine (see :mod:`fedgmi.flower.simulation`)."""

from __future__ import annotations

import argparse
import sys

from fedgmi.errors import ConfigError


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
    args = parser.parse_args(argv)
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
