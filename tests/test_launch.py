"""Ctrl-C while the command is still importing (fedgmi.launch): one line, exit 130, no traceback."""

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_sigint_while_importing_is_one_line():
    code = "import os, signal, time; from fedgmi import launch; launch.install(); os.kill(os.getpid(), signal.SIGINT); time.sleep(30)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 128 + signal.SIGINT
    assert out.stderr.splitlines() == ["fedgmi: SIGINT while starting; nothing was run or written"]


def test_the_entry_point_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "fedgmi", "--version"], capture_output=True, text=True, timeout=120,
                         check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0 and out.stdout.startswith("fedgmi ")
