"""Writes that cannot half-happen: every output file is written to ``<name>.tmp`` beside it and
renamed over ``<name>`` once whole, so a full disk, a file-size limit or a kill during the
write leaves the previous version of the file (or none) and never a truncated one.

A write that fails for lack of space (``ENOSPC``, ``EFBIG`` under ``ulimit -f``, ``EDQUOT``)
raises :class:`WriteFailed`: one line saying what was written, where, how much space it needed
and how much there was. Every file written here is recorded in its run folder's manifest
(:func:`fedgmi.run_folder.record`), so ``--overwrite`` can later remove exactly it.
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from fedgmi.errors import ConfigError
from fedgmi.run_folder import record

SPACE_ERRORS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
"""errno values that mean "no room": a full disk, a file-size limit, a quota."""


def format_bytes(value: float) -> str:
    """``1234567 -> "1.23 MB"`` (decimal units: B, kB, MB, GB)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f} {unit}"
    return f"{int(value)} B"


class WriteFailed(ConfigError):
    """A write refused for lack of space. ``path``: the file; ``needed``: its size in bytes
    (``None`` when unknown). The message is one line: what, where, needed and available."""

    def __init__(self, path: Path, needed: int | None, err: OSError) -> None:
        self.path, self.needed = Path(path), needed
        room = _room(self.path, err)
        need = f"it needs {format_bytes(needed)}" if needed is not None else "size unknown"
        super().__init__(f"cannot write {self.path.name} in {str(self.path.parent)!r}: "
                         f"{err.strerror or os.strerror(err.errno)} ({need}; {room})")


def _room(path: Path, err: OSError) -> str:
    """How much room there was: the file-size limit (``EFBIG``) or the free space on the disk."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if err.errno == errno.EFBIG and limit != resource.RLIM_INFINITY:
        return f"the file-size limit (ulimit -f) is {format_bytes(limit)}"
    probe = path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return f"{format_bytes(shutil.disk_usage(probe).free)} free there"
    except OSError:
        return "free space unknown"


def temporary_path(path: Path) -> Path:
    """Where ``path`` is written before the rename: ``<name>.tmp`` in the same folder."""
    return path.with_name(path.name + ".tmp")


@contextmanager
def replacing(path: str | os.PathLike, needed: Callable[[], int] | None = None) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; on leaving, rename it over
    ``path`` (and record ``path`` in its run's manifest). On an error the temporary file is
    removed and ``path`` is left as it was; a lack of space raises :class:`WriteFailed` (its
    ``needed``: ``needed()`` when given, else the bytes written before the failure).

    Raises:
        WriteFailed: no room (full disk, ``ulimit -f``, quota).
        OSError: any other failed write.
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        written = tmp.stat().st_size if tmp.exists() else None
        tmp.unlink(missing_ok=True)
        if err.errno in SPACE_ERRORS:
            raise WriteFailed(path, needed() if needed else written, err) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    record(path)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` through a temporary file and a rename (see
    :func:`replacing`). Returns the path.

    Raises:
        WriteFailed: no room (the message says how much ``data`` needed).
    """
    payload = data.encode() if isinstance(data, str) else data
    with replacing(path, lambda: len(payload)) as tmp:
        tmp.write_bytes(payload)
    return Path(path)


def copy_atomic(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Copy ``source`` to ``path`` through a temporary file and a rename."""
    with replacing(path, lambda: Path(source).stat().st_size) as tmp:
        shutil.copyfile(source, tmp)
    return Path(path)
