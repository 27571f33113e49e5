"""fedgmi's SuperNode launcher: Flower's SuperNode with its idle waits capped."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

pytest.importorskip("flwr", reason="Flower is not installed (pip install -e \".[flower]\")")

from fedgmi.flower.supernode import capped_time
from tests.flower.loopback import REPO


def test_capped_time_caps_sleep_and_keeps_the_rest_of_time():
    fake = capped_time(0.05)
    started = time.perf_counter()
    fake.sleep(3)
    assert time.perf_counter() - started < 1.0
    assert fake.monotonic is time.monotonic and fake.time is time.time


@pytest.mark.parametrize("value", ["0", "x", "9"])
def test_a_bad_poll_is_refused_in_one_line(value: str):
    done = subprocess.run([sys.executable, "-m", "fedgmi.flower.supernode", "--poll-s", value, "--insecure"],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == f"fedgmi: error: --poll-s = {value!r} must be a number of seconds in 0.01 .. 3"
