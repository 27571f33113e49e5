"""Who owns a run folder and what fedgmi wrote in it: an exclusive lock and a manifest.

Both live in ``<run>/.fedgmi/``:

- ``lock``: held (``fcntl.flock``, exclusive) by the process writing the run, from its claim to
  its exit. The kernel releases it when the process ends in any way (a crash or SIGKILL too),
  so a second claim is refused only while a run is really writing there.
- ``manifest``: one line per thing fedgmi created, appended as it is written:
  ``file<TAB>path`` (relative to the run), ``dir<TAB>path`` (a folder that did not exist
  before the claim), ``tree<TAB>path`` (a folder written whole by a logger, e.g. ``wandb``)
  and ``run<TAB>path`` (a nested run folder with its own manifest, e.g. ``test-<time>``).
  :func:`remove_recorded` deletes exactly these, so ``--overwrite`` never touches a file it
  did not write.

A folder holds a run when its manifest records something (:func:`holds_run`).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

META = ".fedgmi"
MANIFEST = "manifest"
LOCK = "lock"
HEADER = "# fedgmi run manifest v1: what fedgmi wrote here (--overwrite removes exactly these)\n"
KINDS = ("file", "dir", "tree", "run")
SCAN_DEPTH = 3
"""Folders below a run's top this deep are noted at the claim (fedgmi writes no deeper)."""


class FolderInUse(OSError):
    """Another process holds the run folder's lock; ``pid`` is its process id, if known."""

    def __init__(self, path: Path, pid: str) -> None:
        super().__init__(f"{path} is in use by process {pid or '?'}")
        self.path, self.pid = path, pid


@dataclass
class Claim:
    """A run folder this process holds: its lock's file descriptor, the entries recorded and
    the folders that existed before the claim (never recorded as fedgmi's)."""

    root: Path
    fd: int
    entries: set[str] = field(default_factory=set)
    dirs_before: set[str] = field(default_factory=set)


_claims: dict[str, Claim] = {}


def manifest_path(root: Path) -> Path:
    return Path(root) / META / MANIFEST


def read_manifest(root: Path) -> list[tuple[str, str]]:
    """The ``(kind, relative path)`` entries of ``root``'s manifest, oldest first ([] if none)."""
    try:
        lines = manifest_path(root).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    entries = [tuple(line.split("\t", 1)) for line in lines if "\t" in line and not line.startswith("#")]
    return [(k, p) for k, p in entries if k in KINDS and _safe_relative(p)]


def _safe_relative(rel: str) -> bool:
    """A manifest path stays inside its run: relative, no ``..``, not the metadata folder."""
    parts = Path(rel).parts
    return bool(parts) and not Path(rel).is_absolute() and ".." not in parts and parts[0] != META


def holds_run(path: Path) -> bool:
    """Whether ``path`` is a folder whose manifest records something fedgmi wrote."""
    return Path(path).is_dir() and bool(read_manifest(path))


def lock(root: Path) -> int:
    """Take ``root``'s exclusive lock (creating ``.fedgmi/lock``) and write this pid into it.
    Returns the lock's file descriptor (held until :func:`release` or the process's end).

    Raises:
        FolderInUse: another process holds it.
        OSError: the folder cannot be written.
    """
    meta = Path(root) / META
    meta.mkdir(exist_ok=True)
    fd = os.open(meta / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise FolderInUse(Path(root), pid) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def holder(root: Path) -> str | None:
    """The process id holding ``root``'s lock (``"?"`` if it wrote none), or ``None`` when no
    process holds it. Creates nothing. (A lock this process holds counts as held.)"""
    try:
        fd = os.open(Path(root) / META / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
    finally:
        os.close(fd)  # and with it the shared lock just taken
    return None


def start(root: Path, fd: int, keep: bool) -> Claim:
    """Register the locked ``root`` as this process's: a fresh manifest, or (``keep``: a
    resumed run) the existing one, continued."""
    root = Path(os.path.abspath(root))
    claim = Claim(root, fd, dirs_before=_folders(root))
    if keep and manifest_path(root).is_file():
        claim.entries = {f"{k}\t{p}" for k, p in read_manifest(root)}
    else:
        tmp = manifest_path(root).with_name(MANIFEST + ".tmp")
        tmp.write_text(HEADER)
        os.replace(tmp, manifest_path(root))
    _claims[str(root)] = claim
    return claim


def _folders(root: Path, depth: int = SCAN_DEPTH) -> set[str]:
    """The folders under ``root`` (relative, at most ``depth`` deep), the metadata excluded."""
    found: set[str] = set()
    level = [root]
    for _ in range(depth):
        nxt = []
        for folder in level:
            try:
                with os.scandir(folder) as it:
                    subs = [Path(e.path) for e in it if e.is_dir(follow_symlinks=False) and e.name != META]
            except OSError:
                continue
            found.update(str(s.relative_to(root)) for s in subs)
            nxt += subs
        level = nxt
    return found


def record(path: str | os.PathLike, kind: str = "file") -> None:
    """Note in the manifest of the claimed run folder holding ``path`` that fedgmi wrote it
    (with the folders above it that fedgmi created). Does nothing outside a claimed folder
    (e.g. a library call writing elsewhere) or for ``tree`` folders that existed before."""
    absolute = os.path.abspath(path)
    claim = max((c for key, c in _claims.items() if absolute.startswith(key + os.sep)),
                key=lambda c: len(str(c.root)), default=None)
    if claim is None:
        return
    parts = Path(absolute).relative_to(claim.root).parts
    lines = [f"dir\t{Path(*parts[:i])}" for i in range(1, len(parts))
             if str(Path(*parts[:i])) not in claim.dirs_before]
    if kind != "tree" or str(Path(*parts)) not in claim.dirs_before:
        lines.append(f"{kind}\t{Path(*parts)}")
    new = [line for line in lines if line not in claim.entries]
    if new:
        claim.entries.update(new)
        append(claim.root, new)


def append(root: Path, lines: list[str]) -> None:
    """Append entries to ``root``'s manifest (one ``O_APPEND`` write)."""
    with open(manifest_path(root), "a") as f:
        f.write("".join(line + "\n" for line in lines))


def remove_recorded(root: Path) -> None:
    """Delete what ``root``'s manifest records, newest first: its files (and their ``.tmp``
    leftovers), logger trees, nested runs (by their own manifests), and the folders fedgmi
    created once they are empty; then the manifest itself. Anything else stays."""
    root = Path(root)
    for kind, rel in reversed(read_manifest(root)):
        target = root / rel
        if kind == "file":
            for p in (target, target.with_name(target.name + ".tmp")):
                if p.is_file() or p.is_symlink():
                    p.unlink()
        elif kind == "tree" and target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif kind == "run" and target.is_dir() and not target.is_symlink():
            remove_recorded(target)
            _remove_meta(target)
            _rmdir_if_empty(target)
        elif kind == "dir":
            _rmdir_if_empty(target)
    manifest_path(root).unlink(missing_ok=True)


def _remove_meta(root: Path) -> None:
    meta = root / META
    for name in (MANIFEST, LOCK, MANIFEST + ".tmp"):
        (meta / name).unlink(missing_ok=True)
    _rmdir_if_empty(meta)


def _rmdir_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty (the user's files are in it), or gone
        pass


def release(root: Path | None = None, fd: int | None = None) -> None:
    """Give up the claim of ``root`` (every claim of this process when ``None``): unlock it.
    ``fd``: the lock of a claim not registered yet, closed if no registered claim holds it.
    The lock file stays (the next claim takes it)."""
    keys = list(_claims) if root is None else [os.path.abspath(root)]
    closed = set()
    for key in keys:
        claim = _claims.pop(key, None)
        if claim is not None:
            os.close(claim.fd)
            closed.add(claim.fd)
    if fd is not None and fd not in closed:
        os.close(fd)


def enclosing_run(path: Path) -> Path | None:
    """The nearest folder above ``path`` (not ``path`` itself) that holds a run, if any."""
    for parent in Path(os.path.abspath(path)).parents:
        if holds_run(parent):
            return parent
    return None


def is_training_run(path: Path) -> bool:
    """Whether ``path`` holds a run that wrote checkpoints (a fit's, not a test's)."""
    return any(rel == "checkpoints" or rel.startswith("checkpoints" + os.sep) for _, rel in read_manifest(path))
