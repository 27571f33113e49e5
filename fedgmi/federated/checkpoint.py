"""Checkpoints: one ``state`` dict written atomically through ``fabric.save``."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import lightning
import torch

from fedgmi.errors import ConfigError

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


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` onto the CPU (tensors and plain
    containers only: ``torch.load(weights_only=True)``, never unpickling arbitrary objects).

    Raises:
        ConfigError: a missing, truncated or foreign file (one line saying which).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:  # truncated/foreign
        raise ConfigError(f"checkpoint {str(path)!r} cannot be read ({type(err).__name__}); "
                          "it is truncated or not a fedgmi checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"checkpoint {str(path)!r} is not a {CHECKPOINT_FORMAT} file")
    return state
