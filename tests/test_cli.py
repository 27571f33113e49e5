"""The CLI: every shipped config parses, --print_config round-trips, bad input is one line."""

from pathlib import Path

import pytest
import yaml

from fedgmi.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
    monkeypatch.delenv("FEDGMI_DATA_DIR", raising=False)


def test_there_are_configs():
    assert {p.name for p in CONFIGS} >= {"pm_mnist.yaml", "pm_digits.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses_and_instantiates(path):
    parser = build_parser()
    cfg = parser.parse_args(["fit", "--config", str(path)])
    fit_parser = parser._subcommands_action._name_parser_map["fit"]
    objs = fit_parser.instantiate(cfg.fit)
    shift = objs.scenario.shift  # a shift kind by class_path, or the scenario.angles shorthand
    assert objs.scenario.num_components == (shift.num_components if shift else len(objs.scenario.angles))
    assert objs.federation.rounds >= 1
    class_path = yaml.safe_load(path.read_text())["algorithm"]["class_path"]
    assert f"{type(objs.algorithm).__module__}.{type(objs.algorithm).__name__}" == class_path


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_print_config_output_runs_as_a_config_unchanged(path, tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(path), "--print_config"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    dumped = tmp_path / "printed.yaml"
    dumped.write_text(printed)
    parser = build_parser()
    again = parser.parse_args(["fit", "--config", str(dumped)])
    original = parser.parse_args(["fit", "--config", str(path)])
    fit_parser = parser._subcommands_action._name_parser_map["fit"]
    assert yaml.safe_load(fit_parser.dump(again.fit)) == yaml.safe_load(fit_parser.dump(original.fit))


def test_dotted_overrides_and_repeated_configs(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("federation:\n  rounds: 3\n")
    parser = build_parser()
    cfg = parser.parse_args(["fit", "--config", str(CONFIGS[0]), "--config", str(extra),
                             "--scenario.alpha", "2.5", "--algorithm.init_args.local_epochs", "4"])
    assert cfg.fit.federation.rounds == 3
    assert cfg.fit.scenario.alpha == 2.5
    assert cfg.fit.algorithm.init_args.local_epochs == 4


BAD = [
    (["--scenario.alpha", "-1"], "-1"),
    (["--scenario.alpha", "abc"], "abc"),
    (["--scenario.dataset", "cifar"], "cifar"),
    (["--scenario.proportions", "[[0.5,0.6,0.0]]", "--scenario.num_clients", "1"], "0.6"),
    (["--scenario.samples_per_client", "[900, 1000]"], "holds 1797"),
    (["--federation.client_fraction", "1.5"], "1.5"),
    (["--federation.roundz", "3"], "roundz"),
    (["--fabric.precision", "8-bit"], "8-bit"),
    (["--algorithm.init_args.init", "kmeans"], "kmeans"),
    (["--algorithm.init_args.responsibility", "fuzzy"], "fuzzy"),
    (["--algorithm.init_args.estep", "both"], "both"),
    (["--federation.unseen_fraction", "1.0"], "1.0"),
    (["--scenario.dataset", "mnist", "--scenario.data_dir", "no/such/folder",
      "--scenario.download", "false"], "no/such/folder"),
]


@pytest.mark.parametrize(("args", "needle"), BAD, ids=[b[1] for b in BAD])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(args, needle, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["fit", "--config", str(ROOT / "configs" / "pm_digits.yaml"),
                 "--output_dir", str(out), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert needle in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", None], ids=["empty", "foreign", "missing"])
def test_test_command_refuses_a_bad_checkpoint_in_one_line(content, tmp_path, capsys):
    ckpt = tmp_path / "last.ckpt"
    if content is not None:
        ckpt.write_bytes(content)
    code = main(["test", "--config", str(ROOT / "configs" / "pm_digits.yaml"), "--ckpt_path", str(ckpt),
                 "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "last.ckpt" in err, err
    assert not (tmp_path / "out").exists()
