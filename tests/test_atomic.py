"""Writes that cannot half-happen (fedgmi.atomic): the old file stays whole when a write fails,
no temporary file is left, and a lack of room is one line with the file, its size and the room."""

import errno
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from fedgmi.atomic import WriteFailed, replacing, write_atomic

ROOT = Path(__file__).resolve().parents[1]


def test_a_write_replaces_the_file_whole(tmp_path):
    write_atomic(tmp_path / "a" / "m.json", "old")
    write_atomic(tmp_path / "a" / "m.json", b"new")
    assert (tmp_path / "a" / "m.json").read_text() == "new"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["m.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    write_atomic(tmp_path / "m.csv", "whole")
    full = r"cannot write m.csv in .*No space left on device \(it needs 12 B; .* free"
    with pytest.raises(WriteFailed, match=full), replacing(tmp_path / "m.csv", lambda: 12) as tmp:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert (tmp_path / "m.csv").read_text() == "whole"
    assert [p.name for p in tmp_path.iterdir()] == ["m.csv"]


def test_other_errors_pass_through(tmp_path):
    with pytest.raises(PermissionError), replacing(tmp_path / "x") as _:
        raise PermissionError(errno.EACCES, "denied")


def test_a_file_size_limit_names_the_limit(tmp_path):
    code = ("import resource, sys; from fedgmi.atomic import write_atomic; "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.getrlimit(resource.RLIMIT_FSIZE)[1])); "
            "write_atomic(sys.argv[1], b'x' * 5000)")
    if resource.getrlimit(resource.RLIMIT_FSIZE)[1] not in (resource.RLIM_INFINITY,) and \
            resource.getrlimit(resource.RLIMIT_FSIZE)[1] < 1000:
        pytest.skip("hard file-size limit below 1000 bytes")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "big.bin")], capture_output=True, text=True,
                         check=False, env={"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", os.defpath)})
    assert "WriteFailed: cannot write big.bin" in out.stderr
    assert "it needs 5.00 kB; the file-size limit (ulimit -f) is 1.00 kB" in out.stderr
    assert not (tmp_path / "big.bin").exists() and not (tmp_path / "big.bin.tmp").exists()
