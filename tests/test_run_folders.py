"""A run folder belongs to one run: fit refuses a folder holding a run (unless resuming it or
--overwrite), the saved config runs again into a new folder, default folders are unique even for
runs started at once, `fedgmi test` writes into a new sub-folder and changes no training file,
and a checkpoint is refused for another scenario (real digits data, tiny runs)."""

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from fedgmi.cli import main
from fedgmi.outputs import create_unique_dir

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--config", str(ROOT / "configs" / "pm_digits.yaml"), "--federation.rounds", "2",
        "--federation.eval_every", "1", "--scenario.num_clients", "4", "--algorithm.init_args.local_epochs", "1",
        "--algorithm.init_args.warmup_rounds", "1", "--algorithm.init_args.topic_restarts", "1"]


def md5s(folder: Path, skip: str | None = None) -> dict[str, str]:
    """Every file's digest, but the run's lock and manifest (.fedgmi/) and, with ``skip``, the
    folders whose names start with it."""
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).parts[0] != ".fedgmi"
            and not (skip and p.relative_to(folder).parts[0].startswith(skip))}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["fit", *TINY, "--output_dir", str(out)]) == 0
    return out


def run_cli(argv, capsys) -> tuple[int, list[str]]:
    code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


def test_fit_into_a_folder_holding_a_run_is_refused_in_one_line(finished_run, capsys):
    before = md5s(finished_run)
    code, err = run_cli(["fit", *TINY, "--output_dir", str(finished_run)], capsys)
    assert code == 2 and len(err) == 1, err
    assert "already holds a run" in err[0] and "--ckpt_path" in err[0] and "--overwrite" in err[0]
    assert md5s(finished_run) == before


def test_the_saved_config_pins_no_folder_and_runs_again_into_a_new_one(finished_run, tmp_path, monkeypatch):
    saved = yaml.safe_load((finished_run / "config.yaml").read_text())
    assert saved.get("output_dir") is None and saved.get("ckpt_path") is None and not saved.get("overwrite")
    before = md5s(finished_run)
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", str(finished_run / "config.yaml")]) == 0
    (again,) = (tmp_path / "runs").iterdir()
    assert again.name.startswith("digits-fedgmi-") and (again / "checkpoints" / "last.ckpt").is_file()
    assert md5s(finished_run) == before


def test_fit_overwrite_into_a_folder_of_the_users_files_keeps_them(tmp_path, capsys):
    out = tmp_path / "exp"  # the recipe: the user's own logs/ and plots/, no fedgmi run
    for name, text in (("logs/my_experiment.log", "mine"), ("plots/my_figure.png", "my figure")):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    for overwrite in ([], ["--overwrite"], ["--overwrite"]):  # into the folder, then replacing that run twice
        code, err = run_cli(["fit", *TINY, "--federation.rounds", "1", "--output_dir", str(out), *overwrite], capsys)
        assert code == 0, err
    assert (out / "logs" / "my_experiment.log").read_text() == "mine"
    assert (out / "plots" / "my_figure.png").read_text() == "my figure"
    assert (out / "logs" / "metrics.csv").is_file() and (out / "checkpoints" / "last.ckpt").is_file()


def test_test_into_the_training_run_with_overwrite_changes_no_training_file(finished_run, capsys):
    before = md5s(finished_run, skip="test-")
    code, err = run_cli(["test", "--config", str(finished_run / "config.yaml"), "--ckpt_path",
                         str(finished_run / "checkpoints" / "last.ckpt"), "--output_dir", str(finished_run),
                         "--overwrite"], capsys)
    assert code == 0, err
    assert md5s(finished_run, skip="test-") == before
    assert any((p / "metrics.json").is_file() for p in finished_run.glob("test-*"))


def test_test_writes_into_a_new_subfolder_and_changes_no_training_file(finished_run, capsys):
    before, earlier = md5s(finished_run, skip="test-"), set(finished_run.glob("test-*"))
    for _ in range(2):  # twice: two folders, even within one second
        code, err = run_cli(["test", "--config", str(finished_run / "config.yaml"),
                             "--ckpt_path", str(finished_run / "checkpoints" / "last.ckpt")], capsys)
        assert code == 0, err
    assert md5s(finished_run, skip="test-") == before
    tests = sorted(p for p in finished_run.iterdir() if p.name.startswith("test-") and p not in earlier)
    assert len(tests) == 2
    for folder in tests:
        assert {"config.yaml", "metrics.csv", "metrics.json", "proportions.csv", "component_accuracy.csv",
                "plots", "logs"} <= {p.name for p in folder.iterdir()}
        assert not (folder / "checkpoints").exists()


@pytest.mark.parametrize(("args", "field"), [
    (["--scenario.num_clients", "5"], "scenario.num_clients"),
    (["--scenario.seed", "7"], "scenario.seed"),
    (["--scenario.alpha", "2.0"], "scenario.alpha"),
    (["--scenario.angles", "[0, 90, 270]"], "scenario.shift"),
    (["--seed", "3"], "seed"),
])
def test_resume_or_test_against_another_scenario_is_refused_naming_the_field(finished_run, args, field, capsys):
    before = md5s(finished_run)
    ckpt = str(finished_run / "checkpoints" / "last.ckpt")
    for command in ("fit", "test"):
        code, err = run_cli([command, "--config", str(finished_run / "config.yaml"), "--ckpt_path", ckpt,
                             "--federation.rounds", "3", *args], capsys)
        assert code == 2 and len(err) == 1, err
        assert f"written for {field} = " in err[0], err
    assert md5s(finished_run) == before


def test_create_unique_dir_gives_every_concurrent_caller_its_own_folder(tmp_path):
    got, barrier = [], threading.Barrier(8)

    def claim():
        barrier.wait()
        got.append(create_unique_dir(tmp_path / "runs" / "digits-fedgmi-20260101-000000"))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 8 and all(p.is_dir() for p in got)


def test_two_fits_started_together_get_two_folders_each_with_its_config(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "fedgmi", "fit", *TINY, "--federation.rounds", "1",
                               "--seed", str(seed)], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    for proc in procs:
        assert proc.wait(timeout=600) == 0, proc.stderr.read()
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 2
    assert sorted(yaml.safe_load((f / "config.yaml").read_text())["seed"] for f in folders) == [1, 2]
