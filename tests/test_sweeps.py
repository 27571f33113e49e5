"""Every W&B sweep file: the command runs `fedgmi fit`, the metric is a logged key named in the
file's comment, and every parameter value (every combination of a grid) parses through the CLI
in the order the W&B agent passes them. The grid covers every algorithm with its own config and
varies the scenario's seed with the run's."""

import itertools
from pathlib import Path

import pytest
import yaml

from fedgmi.cli import ALGORITHMS, build_parser
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


def parse(sweep: dict, assignment: dict, parser=None):
    """The agent's command line for one assignment (``--key=value`` each, in the file's order),
    parsed and instantiated; returns the parsed fit namespace."""
    command = sweep["command"]
    fixed = command[command.index("fit") + 1:command.index("${args}")]
    fixed = [str(ROOT / a) if a.endswith(".yaml") else a for a in fixed]
    args = [f"--{key}={ROOT / value if key == 'config' else value}" for key, value in assignment.items()]
    parser = parser or build_parser()
    cfg = parser.parse_args(["fit", *fixed, *args])
    parser._subcommands_action._name_parser_map["fit"].instantiate(cfg.fit)
    return cfg.fit


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
    parser = build_parser()
    for assignment in assignments:
        parse(sweep, assignment, parser)


def _sweep(name: str) -> dict:
    return yaml.safe_load((ROOT / "sweeps" / name).read_text())


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_the_optimised_metric_is_stated_in_the_comment(path):
    sweep = yaml.safe_load(path.read_text())
    comments = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    assert f"Optimised metric: {sweep['metric']['name']}" in comments


def test_bayes_optimises_assignment_and_grid_client_accuracy():
    assert _sweep("fedgmi_bayes.yaml")["metric"]["name"] == "eval/assignment_accuracy"
    assert _sweep("grid_algorithm_alpha_seed.yaml")["metric"]["name"] == "eval/client_accuracy_mean"


def test_the_grid_covers_every_algorithm_with_its_own_config():
    sweep = _sweep("grid_algorithm_alpha_seed.yaml")
    configs = sweep["parameters"]["config"]["values"]
    assert next(iter(sweep["parameters"])) == "config"  # passed first: later flags override the file
    assert sorted(sweep["parameters"]) == list(sweep["parameters"])  # alphabetical = file order
    names = set()
    for config in configs:
        class_path = yaml.safe_load((ROOT / config).read_text())["algorithm"]["class_path"]
        name = class_path.rsplit(".", 1)[1]
        names.add(name)
        assert Path(config).stem == ("pm_mnist" if name == "FedGMI" else f"pm_mnist_{name.lower()}")
    assert names == set(ALGORITHMS)


def test_the_grid_varies_the_scenario_seed_with_the_seed():
    sweep = _sweep("grid_algorithm_alpha_seed.yaml")
    first = {k: v.get("value", (v.get("values") or [None])[0]) for k, v in sweep["parameters"].items()}
    parser = build_parser()
    for seed in sweep["parameters"]["seed"]["values"]:
        fit = parse(sweep, {**first, "seed": seed}, parser)
        objs = parser._subcommands_action._name_parser_map["fit"].instantiate(fit)
        assert fit.seed == seed and objs.scenario.seed is None  # null: the CLI uses the run's seed
