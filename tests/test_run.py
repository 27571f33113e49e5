"""The run layer (fedgmi.run) and the public API over it: ``fedgmi.fit`` / ``fedgmi.test`` write
the same run folder as the CLI for the same config and seed."""

import json
from pathlib import Path

import pytest
import yaml

import fedgmi
from fedgmi.cli import main
from fedgmi.errors import ConfigError
from fedgmi.run import command_args

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "configs" / "pm_digits.yaml"
#: Short settings: 2 rounds, one warm-up round, one local epoch, a small topic model.
SHORT = {"federation.rounds": 2, "federation.eval_every": 1, "algorithm.init_args.local_epochs": 1,
         "algorithm.init_args.warmup_rounds": 1, "algorithm.init_args.topic_clusters": 6,
         "evaluation.num_samples": 2, "fabric.accelerator": "cpu"}
#: Keys of metrics.json that measure time, not the result.
TIMED = {"wall_time_s", "round_time_s", "train_time_s"}


def _metrics(run: Path) -> dict:
    return {k: v for k, v in json.loads((run / "metrics.json").read_text()).items() if k not in TIMED}


def _cli_args(subcommand: str, **options) -> list[str]:
    return command_args(subcommand, DIGITS, SHORT, **options)


def test_command_args_spell_the_cli_flags():
    args = command_args("fit", [DIGITS, {"federation": {"rounds": 3}}], {"algorithm.init_args.angles": [0, 90]},
                        seed=1, output_dir=None)
    assert args[:3] == ["fit", "--config", str(DIGITS)]
    assert yaml.safe_load(args[4]) == {"federation": {"rounds": 3}}
    assert args[5:] == ["--seed", "1", "--algorithm.init_args.angles", "[0, 90]"]


def test_fit_writes_the_cli_run_folder_and_test_evaluates_it(tmp_path):
    assert main(_cli_args("fit", output_dir=str(tmp_path / "cli"), seed=3)) == 0
    run = fedgmi.fit(DIGITS, seed=3, output_dir=tmp_path / "api", overrides=SHORT)
    assert run.path == tmp_path / "api"
    cli, api = tmp_path / "cli", tmp_path / "api"
    assert _metrics(api) == _metrics(cli)
    assert run.metrics["assignment_accuracy"] == _metrics(api)["assignment_accuracy"]
    assert (api / "metrics.csv").read_text().count("\n") == (cli / "metrics.csv").read_text().count("\n") == 3
    assert (api / "config.yaml").read_text() == (cli / "config.yaml").read_text()
    tested = fedgmi.test(api / "config.yaml", ckpt_path=api / "checkpoints" / "last.ckpt",
                         output_dir=tmp_path / "tested")
    assert tested.metrics["assignment_accuracy"] == run.metrics["assignment_accuracy"]
    assert (tmp_path / "tested" / "metrics.json").is_file()


def test_fit_takes_a_mapping_and_refuses_bad_input_in_one_line(tmp_path):
    config = yaml.safe_load(DIGITS.read_text())
    config["federation"]["rounds"] = 0
    with pytest.raises(ConfigError, match="federation.rounds") as err:
        fedgmi.fit(config, output_dir=tmp_path / "run")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="federation.nonsense"):
        fedgmi.fit(DIGITS, overrides={"federation.nonsense": 1}, output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_public_names_load_lazily():
    assert {"fit", "test", "ScenarioConfig", "build_scenario", "Strategy", "FedGMI", "FedAvg"} <= set(fedgmi.__all__)
    assert all(getattr(fedgmi, name) is not None for name in fedgmi.__all__)
    from fedgmi.federated import ClientReply, ClientTask, ClientWorker, Strategy  # noqa: F401
    with pytest.raises(AttributeError):
        fedgmi.no_such_name  # noqa: B018


def test_all_lists_exactly_the_lazy_exports():
    from fedgmi import _EXPORTS
    assert set(fedgmi.__all__) == {"__version__", *_EXPORTS}
