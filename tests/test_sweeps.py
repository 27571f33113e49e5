"""Every W&B sweep file: the command runs `fedgmi fit`, the metric is a logged key, and every
parameter value (every combination of a grid) parses through the CLI."""

import itertools
from pathlib import Path

import pytest
import yaml

from fedgmi.cli import build_parser
from fedgmi.tracking import metric_key

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
LOGGED = {metric_key(k) for k in ("assignment_accuracy", "proportion_error_tv", "client_accuracy_mean", "nmi")}


def candidate_values(spec: dict) -> list:
    """The values a sweep may pass for one parameter (both ends and the middle of a range)."""
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    low, high = spec["min"], spec["max"]
    mid = (low * high) ** 0.5 if spec.get("distribution", "").startswith("log") else (low + high) / 2
    return [low, mid, high]


def parse(sweep: dict, assignment: dict) -> None:
    command = sweep["command"]
    config = command[command.index("--config") + 1]
    args = [f"--{key}={value}" for key, value in assignment.items()]  # how the W&B agent passes them
    parser = build_parser()
    cfg = parser.parse_args(["fit", "--config", str(ROOT / config), *args])
    parser._subcommands_action._name_parser_map["fit"].instantiate(cfg.fit)


def test_there_are_a_bayes_and_a_grid_sweep():
    methods = {yaml.safe_load(p.read_text())["method"] for p in SWEEPS}
    assert {"bayes", "grid"} <= methods


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_command_and_metric(path):
    sweep = yaml.safe_load(path.read_text())
    assert sweep["command"][:5] == ["${env}", "${interpreter}", "-m", "fedgmi", "fit"]
    assert sweep["command"][-1] == "${args}"
    assert sweep["metric"]["name"] in LOGGED
    assert sweep["parameters"]["logging.wandb"]["value"] is True


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_parameter_value_parses(path):
    sweep = yaml.safe_load(path.read_text())
    params = {k: candidate_values(v) for k, v in sweep["parameters"].items()}
    if sweep["method"] == "grid":
        assignments = [dict(zip(params, combo)) for combo in itertools.product(*params.values())]
    else:  # every value of each parameter, the others at their first value
        first = {k: v[0] for k, v in params.items()}
        assignments = [{**first, key: value} for key, values in params.items() for value in values]
    for assignment in assignments:
        parse(sweep, assignment)
