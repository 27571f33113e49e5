"""The run folder's lock and manifest (fedgmi.run_folder, claimed through
fedgmi.outputs.claim_run_dir): --overwrite removes exactly what fedgmi recorded, a second claim
is refused while the first lives and allowed after its process dies (SIGKILL too), a folder of
the user's own files is not "a run", and a run cannot nest inside another."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fedgmi import run_folder
from fedgmi.atomic import write_atomic
from fedgmi.errors import ConfigError
from fedgmi.outputs import claim_run_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _release():
    yield
    run_folder.release()


def fake_run(path: Path) -> None:
    """A run's files written by fedgmi (recorded), in a folder that already holds the user's."""
    claim_run_dir("output_dir", path, overwrite=False)
    for name in ("config.yaml", "metrics.csv", "checkpoints/round-0001.ckpt", "checkpoints/last.ckpt",
                 "logs/metrics.csv", "plots/curves.png"):
        write_atomic(path / name, "fedgmi's")
    run_folder.release()


def user_files(path: Path) -> dict[str, str]:
    files = {"logs/my_experiment.log": "mine", "plots/my_figure.png": "my figure", "notes.txt": "notes"}
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return files


def test_a_folder_of_the_users_own_files_is_no_run_and_they_survive_a_claim(tmp_path):
    mine = user_files(tmp_path / "exp")
    assert not run_folder.holds_run(tmp_path / "exp")
    claim_run_dir("output_dir", tmp_path / "exp", overwrite=True)
    assert {n: (tmp_path / "exp" / n).read_text() for n in mine} == mine


def test_overwrite_removes_exactly_the_recorded_files(tmp_path):
    out = tmp_path / "exp"
    mine = user_files(out)
    fake_run(out)
    (out / "checkpoints" / "keep.txt").write_text("mine too")  # a user file inside fedgmi's own folder
    assert run_folder.holds_run(out)
    claim_run_dir("output_dir", out, overwrite=True)
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and ".fedgmi" not in p.parts)
    assert left == sorted([*mine, "checkpoints/keep.txt"])
    assert not run_folder.holds_run(out)  # a new, empty manifest


def test_overwrite_removes_fedgmis_own_folders_once_empty_and_nested_test_runs(tmp_path):
    out = tmp_path / "run"
    fake_run(out)
    test = out / "test-1"
    claim_run_dir("output_dir", test, overwrite=False, nested=True)
    write_atomic(test / "metrics.json", "{}")
    run_folder.release()
    assert ("run", "test-1") in run_folder.read_manifest(out)
    claim_run_dir("output_dir", out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [".fedgmi"]


def test_a_run_is_refused_without_overwrite_and_the_hint_resumes_it(tmp_path):
    out = tmp_path / "run"
    fake_run(out)
    with pytest.raises(ConfigError, match=r"already holds a run; resume it with --ckpt_path .*last.ckpt"):
        claim_run_dir("output_dir", out, overwrite=False)


def test_unrecorded_files_under_a_runs_names_are_never_replaced(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("my own config")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="config.yaml.*no record of writing"):
            claim_run_dir("output_dir", out, overwrite=overwrite)
    assert (out / "config.yaml").read_text() == "my own config"


def test_a_second_claim_is_refused_while_the_first_holds_the_folder(tmp_path):
    claim_run_dir("output_dir", tmp_path / "run", overwrite=False)
    with pytest.raises(ConfigError, match=r"is in use by another fedgmi run \(process \d+\)"):
        claim_run_dir("output_dir", tmp_path / "run", overwrite=True)


def test_the_lock_of_a_killed_process_is_free_again(tmp_path):
    code = ("import sys, time; from pathlib import Path; from fedgmi.outputs import claim_run_dir; "
            "claim_run_dir('output_dir', Path(sys.argv[1]), False); print('claimed', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "claimed"
    with pytest.raises(ConfigError, match=f"process {proc.pid}"):
        claim_run_dir("output_dir", tmp_path / "run", overwrite=False)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert claim_run_dir("output_dir", tmp_path / "run", overwrite=False) == tmp_path / "run"


def test_a_run_cannot_nest_inside_another(tmp_path):
    fake_run(tmp_path / "run")
    with pytest.raises(ConfigError, match="lies inside the run folder"):
        claim_run_dir("output_dir", tmp_path / "run" / "checkpoints", overwrite=False)


def test_a_manifest_never_reaches_outside_its_folder(tmp_path):
    out = tmp_path / "run"
    fake_run(out)
    (tmp_path / "victim.txt").write_text("keep")
    run_folder.append(out, ["file\t../victim.txt", f"file\t{tmp_path / 'victim.txt'}", "tree\t.fedgmi"])
    run_folder.remove_recorded(out)
    assert (tmp_path / "victim.txt").read_text() == "keep"


def test_a_name_too_long_for_the_file_system_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="too long for the file system"):
        claim_run_dir("output_dir", tmp_path / ("x" * 300), overwrite=False)


def test_the_check_before_any_work_names_the_process_that_holds_the_folder(tmp_path):
    from fedgmi.outputs import check_claimable

    claim_run_dir("output_dir", tmp_path / "run", overwrite=False)
    write_atomic(tmp_path / "run" / "config.yaml", "a running run's")
    with pytest.raises(ConfigError, match=f"in use by another fedgmi run \\(process {os.getpid()}\\)"):
        check_claimable("output_dir", tmp_path / "run", overwrite=False)
    run_folder.release()
    assert run_folder.holder(tmp_path / "run") is None
    with pytest.raises(ConfigError, match="already holds a run"):
        check_claimable("output_dir", tmp_path / "run", overwrite=False)
