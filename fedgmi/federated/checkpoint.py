"""Checkpoints: one ``state`` dict written atomically through ``fabric.save``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning

CHECKPOINT_FORMAT = "fedgmi-checkpoint-v1"


def save_checkpoint(fabric: lightning.Fabric, path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (plus a format tag) to ``path`` via a temporary file and a rename, so a
    crash never leaves a half-written checkpoint. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fabric.save(tmp, {"format": CHECKPOINT_FORMAT, **state})
    os.replace(tmp, path)
    return path
