"""The CLI: every shipped config parses, --print_config round-trips, bad input is one line."""

from pathlib import Path

import pytest
import torch
import yaml

from fedgmi.cli import ALGORITHMS, build_parser, instantiate, main
from fedgmi.outputs import format_metric, print_summary

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
    (["--algorithm.init_args.optimizer.init_args.lr", "-1"], "algorithm.init_args.optimizer.init_args.lr = -1"),
    (["--algorithm.init_args.optimizer.init_args.lr", ".nan"], "algorithm.init_args.optimizer.init_args.lr = nan"),
    (["--algorithm.init_args.optimizer.init_args.lr", ".inf"], "must be finite"),
    (["--algorithm.init_args.optimizer.init_args.betas", "[0.9, 1.5]"], "optimizer.init_args.betas"),
    (["--algorithm.init_args.component.init_args.latent_dim", "0"], "component.init_args.latent_dim"),
    (["--output_dir", "/proc/fedgmi-x"], "/proc/fedgmi-x"),
    (["--output_dir", str(ROOT / "pyproject.toml" / "x")], "lies under the file"),
    (["--fabric.threads", "0"], "fabric.threads"),
    (["--seed", "-1"], "seed = -1"),
    (["--algorithm", "NoSuchAlgorithm"], "FedEM"),
    (["--scenario.alpha", "0"], "scenario.alpha = 0"),
    (["--scenario.angles", "[0, 360]"], "scenario.angles"),
    (["--scenario.test_fraction", "1.0"], "scenario.test_fraction"),
    (["--federation.min_clients", "50"], "federation.min_clients"),
]
if not torch.cuda.is_available():
    BAD.append((["--fabric.accelerator", "cuda"], "fabric.accelerator = 'cuda' is not available"))


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


def test_an_empty_config_names_its_file(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    assert main(["fit", "--config", str(empty)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(empty) in err[0] and "empty" in err[0]


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == "fedgmi 0.1.0"


#: Methods in a feature space: they take a feature extractor, not a classifier.
FEATURE_SPACE = {"PFedGM", "FedVTC"}


@pytest.mark.parametrize("name", ALGORITHMS)
def test_every_algorithm_by_class_name_keeps_the_configs_cnn_head(name):
    """jsonargparse keeps the init_args the new class also accepts when only the class changes
    (its documented rule; the others are dropped), so switching keeps the paper-layout config's
    CNN head (and drops it for the feature-space methods, which have none; configs/pm_mnist.yaml
    has a shared body instead of a classifier)."""
    parser = build_parser()
    cfg = parser.parse_args(["fit", "--config", str(ROOT / "configs" / "pm_mnist_paper.yaml"), "--algorithm", name])
    objs = parser._subcommands_action._name_parser_map["fit"].instantiate(cfg.fit)
    assert type(objs.algorithm).__name__ == name
    init_args = cfg.fit.algorithm.init_args
    if name in FEATURE_SPACE:
        assert "classifier" not in init_args
    else:
        head = init_args.classifier
        assert head.class_path == "fedgmi.models.heads.CNNClassifier" and head.init_args.channels == [8, 16]
    assert init_args.optimizer.init_args.lr == 0.001


def test_algorithm_help_by_class_name(capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--algorithm.help", "IFCA"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "--algorithm.classifier" in out and "IFCA" in out


def test_validate_with_a_missing_dataset_changes_nothing_on_disk(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # pm_mnist.yaml: data_dir "data", download true
    assert main(["validate", "--config", str(ROOT / "configs" / "pm_mnist.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scenario.data_dir" in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_scenario_seed_null_follows_the_run_seed():
    parser = build_parser()
    cfg = parser.parse_args(["validate", "--config", str(ROOT / "configs" / "pm_digits.yaml"), "--seed", "2",
                             "--scenario.seed", "null"])
    objs, scenario, _ = instantiate(parser, cfg)
    assert objs.scenario.seed == 2 and scenario.config.seed == 2


def test_an_unread_component_lr_is_warned_about(capsys):
    assert main(["validate", "--config", str(ROOT / "configs" / "pm_digits.yaml"),
                 "--algorithm.init_args.component.init_args.lr", "0.05"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "component.init_args.lr = 0.05 is not used" in err[0]
    assert "algorithm.init_args.optimizer.init_args.lr" in err[0]


def test_summary_shows_bytes_in_kb_mb_nan_as_na_and_the_algorithm(tmp_path):
    from rich.console import Console

    assert format_metric("bytes_up", 28_460_464) == "28.46 MB"
    assert format_metric("bytes_down_round", 4_176) == "4.18 kB"
    assert format_metric("bytes_up", 0) == "0 B"
    assert format_metric("assignment_accuracy", float("nan")) == "n/a"
    assert format_metric("wall_time_s", 12.345) == "12.3 s"
    console = Console(record=True, width=100)
    print_summary({"assignment_accuracy": float("nan"), "bytes_up": 1_500_000}, tmp_path, console,
                  algorithm="FedAvg")
    text = console.export_text()
    assert "FedAvg" in text and "n/a" in text and "1.50 MB" in text and "nan" not in text


def test_the_progress_bar_names_the_stages(monkeypatch):
    from rich.progress import Progress

    from fedgmi.data import ScenarioConfig, build_scenario
    from fedgmi.federated.evaluation import EvalConfig
    from fedgmi.federated.server import FederationConfig, initialisation_stage, run_federation
    from tests.helpers import make_fedgmi

    stages = []
    original = Progress.update

    def update(self, task_id, **kw):
        if kw.get("description"):
            stages.append(kw["description"])
        return original(self, task_id, **kw)

    monkeypatch.setattr(Progress, "update", update)
    scenario = build_scenario(ScenarioConfig(dataset="digits", num_clients=4, samples_per_client=(60, 80)))
    strategy = make_fedgmi(scenario, initialize=False, local_epochs=1, warmup_rounds=1)
    assert initialisation_stage(strategy) == "topic-model initialisation"
    run_federation(strategy, scenario, FederationConfig(rounds=2, eval_every=2), EvalConfig(num_samples=2), 0,
                   lambda *a: None, progress=True)
    assert stages[:4] == ["topic-model initialisation", "round 1/2", "round 2/2", "evaluating (round 2/2)"]


@pytest.mark.parametrize("override, key", [(["--federation.rounds", "0"], "federation.rounds"),
                                           (["--seed", "-1"], "seed"), (["--scenario.alpha", "-2"], "scenario.alpha")])
def test_print_config_warns_in_one_line_when_the_config_would_be_refused(override, key, capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(ROOT / "configs" / "pm_digits.yaml"), *override, "--print_config"])
    assert done.value.code == 0
    out, err = capsys.readouterr()
    assert "federation:" in out  # the config is printed as given
    assert err.count("\n") == 1 and err.startswith("fedgmi: warning: the printed config would be refused: ")
    assert f"{key} = " in err


def test_print_config_of_a_valid_config_says_nothing_on_stderr(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / "configs" / "pm_digits.yaml"), "--print_config"])
    assert capsys.readouterr().err == ""
