"""``fedgmi`` command line: parsing and wiring only (config -> objects -> run).

Follows LightningCLI's conventions through jsonargparse: ``--config`` (repeatable, later files
and flags override earlier ones), ``--print_config``, dotted overrides such as
``--federation.rounds 5``, and ``class_path``/``init_args`` for swappable parts (the
algorithm, its component model and its optimizer). An invalid value stops before any work with
one line on stderr and exit status 2.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import lightning
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace, lazy_instance
from rich.console import Console

from fedgmi.algorithms.fedgmi import FedGMI
from fedgmi.data import ScenarioConfig, build_scenario
from fedgmi.errors import ConfigError
from fedgmi.federated.checkpoint import save_checkpoint
from fedgmi.federated.evaluation import EvalConfig
from fedgmi.federated.server import FederationConfig, run_federation
from fedgmi.federated.strategy import ProblemSpec, Strategy
from fedgmi.outputs import RunDirectory, default_output_dir, print_summary

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "64-true")


@dataclass
class FabricConfig:
    """Devices and precision, passed to ``lightning.Fabric``.

    Attributes:
        accelerator: "cpu", "cuda", "gpu", "mps" or "auto".
        devices: Number of devices (1; several are not supported yet).
        precision: One of 32-true, bf16-mixed, 16-mixed, 64-true.
    """

    accelerator: str = "auto"
    devices: int = 1
    precision: str = "32-true"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"fabric.precision = {self.precision!r}; choose one of: {', '.join(PRECISIONS)}")
        if self.devices != 1:
            raise ConfigError(f"fabric.devices = {self.devices!r}: only 1 device is supported so far")


def build_parser() -> ArgumentParser:
    """The ``fedgmi`` parser with its ``fit`` subcommand."""
    parser = ArgumentParser(prog="fedgmi", description="Federated learning under probabilistic mixtures.",
                            exit_on_error=False)
    fit = ArgumentParser(description="Train and evaluate a federated mixture.", exit_on_error=False)
    fit.add_argument("--config", action=ActionConfigFile, help="YAML config file (repeatable)")
    fit.add_argument("--seed", type=int, default=0, help="seed of the scenario and the run")
    fit.add_argument("--output_dir", type=str | None, default=None,
                     help="run directory (default runs/<dataset>-<algorithm>-<time>)")
    fit.add_class_arguments(ScenarioConfig, "scenario")
    fit.add_class_arguments(FederationConfig, "federation")
    fit.add_class_arguments(EvalConfig, "evaluation")
    fit.add_class_arguments(FabricConfig, "fabric")
    fit.add_subclass_arguments(Strategy, "algorithm", default=lazy_instance(FedGMI), required=False)
    subcommands = parser.add_subcommands(dest="subcommand")
    subcommands.add_subcommand("fit", fit)
    return parser


def fit(parser: ArgumentParser, cfg: Namespace, console: Console) -> dict:
    """Build the scenario, the strategy and Fabric from ``cfg.fit``; run; write outputs."""
    fit_parser = parser._subcommands_action._name_parser_map["fit"]
    objs = fit_parser.instantiate(cfg.fit)
    scenario_cfg: ScenarioConfig = objs.scenario
    strategy: Strategy = objs.algorithm
    started = time.perf_counter()
    scenario = build_scenario(scenario_cfg)  # bad data input fails here, before any output
    name = f"{scenario_cfg.dataset}-{type(strategy).__name__.lower()}"
    run = RunDirectory(cfg.fit.output_dir or default_output_dir(name))
    run.write_config(fit_parser.dump(cfg.fit, skip_none=False))
    fabric = lightning.Fabric(accelerator=objs.fabric.accelerator, devices=objs.fabric.devices,
                              precision=objs.fabric.precision)
    lightning.seed_everything(cfg.fit.seed, verbose=False)
    console.print(scenario.summary())
    spec = ProblemSpec(scenario.image_shape, scenario.num_components, scenario.num_classes,
                       len(scenario.clients))
    strategy.setup(spec, fabric, cfg.fit.seed)

    def on_eval(rnd: int, row: dict, result) -> None:
        run.append_metrics(row)
        run.write_proportions(result.estimated_proportions, scenario.truth.proportions.numpy(),
                              result.mapping, scenario.component_names)
        save_checkpoint(fabric, run.checkpoint_path, {"round": rnd, "strategy": strategy.state_dict()})

    row, result = run_federation(strategy, scenario, objs.federation, objs.evaluation,
                                 cfg.fit.seed, on_eval, progress=console.is_terminal)
    final = {**row, "rounds": objs.federation.rounds, "wall_time_s": time.perf_counter() - started,
             "component_matching": result.mapping,
             "test_nll_per_component": dict(zip(scenario.component_names, result.test_nll))}
    run.write_metrics_json(final)
    print_summary(final, run.path, console)
    return final


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedgmi`` console script; returns the exit status."""
    console = Console()
    parser = build_parser()
    try:
        cfg = parser.parse_args(argv)
        if cfg.subcommand == "fit":
            fit(parser, cfg, console)
        return 0
    except ConfigError as err:
        print(f"fedgmi: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # jsonargparse's ArgumentError and friends
        if type(err).__name__ != "ArgumentError":
            raise
        print(f"fedgmi: error: {_one_line(str(err))}", file=sys.stderr)
        return 2


def _one_line(message: str) -> str:
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    return " ".join(lines)[:500]


if __name__ == "__main__":
    sys.exit(main())
