"""fedgmi.run_config: the saved config of every shipped config reads back (and the digits one
validates), a dataset given by class_path, and the line naming the options an --algorithm
switch drops."""

from pathlib import Path

import pytest
import torch

from fedgmi.cli import main
from fedgmi.run import parse
from fedgmi.run_config import saved_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(ROOT.glob("configs/*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_the_saved_config_of_every_shipped_config_reads_back_and_validates(config, tmp_path, capsys):
    parser, cfg = parse(["fit", "--config", str(config)])
    text = saved_config(parser, cfg)
    assert "Unable to serialize" not in text
    parser2, cfg2 = parse(["validate", "--config", text])
    assert saved_config(parser2, cfg2) == text  # a fixpoint: nothing lost or changed
    assert cfg2.validate.algorithm.class_path == cfg.fit.algorithm.class_path
    (tmp_path / "config.yaml").write_text(text)
    code = main(["validate", "--config", str(tmp_path / "config.yaml")])
    out, err = capsys.readouterr()
    if code == 2 and "validate neither downloads" in err:  # a dataset this machine lacks (not the config)
        assert cfg.fit.scenario.dataset != "mnist" or "DatasetUnion" in text, err
    else:
        assert code == 0 and "config OK" in out, err


def test_the_saved_digits_config_validates(tmp_path, capsys):
    parser, cfg = parse(["fit", "--config", str(ROOT / "configs" / "pm_digits.yaml")])
    (tmp_path / "config.yaml").write_text(saved_config(parser, cfg))
    assert main(["validate", "--config", str(tmp_path / "config.yaml")]) == 0
    assert "config OK: FedGMI" in capsys.readouterr().out


def test_switching_the_algorithm_names_each_dropped_option_in_one_line(capsys):
    assert main(["validate", "--config", str(ROOT / "configs" / "pm_digits.yaml"), "--algorithm", "FedAvg"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    for option in ("classifier_sharing", "component", "init", "warmup_rounds", "topic_clusters"):
        assert f"algorithm.init_args.{option} = " in err[0]
    assert "(kept: optimizer, local_epochs, batch_size)" in err[0]


def test_no_line_when_the_algorithm_stays(capsys):
    assert main(["validate", "--config", str(ROOT / "configs" / "pm_digits.yaml"), "--algorithm", "FedGMI"]) == 0
    assert "drops" not in capsys.readouterr().err


def test_a_dataset_by_class_path_from_the_command_line(tmp_path, capsys):
    images, labels = torch.rand(300, 1, 8, 8), torch.arange(300) % 3
    torch.save({"x": images, "y": labels}, tmp_path / "mine.pt")
    dataset = ('{"class_path": "fedgmi.data.custom.TensorFile", "init_args": {"path": "%s", "images": "x", '
               '"labels": "y"}}' % (tmp_path / "mine.pt"))
    args = ["validate", "--config", str(ROOT / "configs" / "pm_digits.yaml"), "--scenario.dataset", dataset,
            "--scenario.num_clients", "4", "--scenario.samples_per_client", "[30, 40]"]
    assert main(args) == 0
    assert "config OK: FedGMI, 4 clients, K = 3" in capsys.readouterr().out
    assert main([*args[:-6], "--scenario.dataset", dataset.replace("mine.pt", "missing.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.pt" in err and "cannot be read" in err
