"""The CLI fuzz (benchmarks/fuzz_cli.py) as a standing test: drawn invocations of every
subcommand with hostile values, files and folders end with exit status 0 or 2, at most two
lines on stderr, no traceback and no change to any file they do not own. The default suite runs
a quick share (inputs only: what would train is validated instead); ``-m slow`` runs 1,000
with real trainings, tests, selections and full disks."""

import pytest

from tests.helpers import load_benchmark

fuzz = load_benchmark("fuzz_cli")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    box = fuzz.Sandbox.create(tmp_path_factory.mktemp("fuzz"))
    yield box
    from fedgmi import run_folder
    run_folder.release()


def check(tally) -> None:
    summary = tally.report(0.0)
    assert (tally.tracebacks, tally.bad_exit, tally.long_stderr, tally.files_changed) == (0, 0, 0, 0), summary


def test_quick_fuzz_of_the_inputs(sandbox):
    tally = fuzz.run_fuzz(300, sandbox, seed=1, train=False)
    assert tally.n == 300
    check(tally)


@pytest.mark.slow
def test_fuzz_of_a_thousand_invocations(sandbox):
    tally = fuzz.run_fuzz(1000, sandbox, seed=2, processes=5)
    assert tally.n == 1000
    check(tally)
