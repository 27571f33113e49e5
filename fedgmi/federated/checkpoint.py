"""Checkpoints: one ``state`` dict written atomically through ``fabric.save``, read back with
``torch.load(weights_only=True)`` (tensors and plain containers only, never arbitrary objects).

A fit checkpoint holds the round counter and loop totals (:class:`LoopState`), the strategy's
state (global components, every client's state, e.g. its mixture proportions, and any server
state), the channel's per-client codec state (residuals, held copies), every random generator's state (torch, CUDA, numpy, Python), the logger's run id and a
signature of the strategy (class and component sizes) that a resume must match.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import torch

from fedgmi.errors import ConfigError

CHECKPOINT_FORMAT = "fedgmi-checkpoint-v2"  # v2: the channel's state under "channel"


def save_checkpoint(fabric: lightning.Fabric, path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (plus a format tag) to ``path`` via a temporary file and a rename, so a
    crash never leaves a half-written checkpoint. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fabric.save(tmp, {"format": CHECKPOINT_FORMAT, **state})  # written by rank 0 (all ranks call)
    if fabric.is_global_zero:
        os.replace(tmp, path)
    return path


def save_round_checkpoint(fabric: lightning.Fabric, folder: Path, rounds_done: int,
                          state: dict[str, Any], keep: int) -> Path:
    """Write ``folder/round-NNNN.ckpt``, copy it to ``folder/last.ckpt`` (atomically too), and
    delete all but the ``keep`` newest round files. Returns the round file's path."""
    path = save_checkpoint(fabric, folder / f"round-{rounds_done:04d}.ckpt", state)
    if not fabric.is_global_zero:
        return path
    tmp = folder / "last.ckpt.tmp"
    shutil.copyfile(path, tmp)
    os.replace(tmp, folder / "last.ckpt")
    for old in sorted(folder.glob("round-*.ckpt"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` onto the CPU.

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


def strategy_signature(name: str, global_state: Sequence[torch.Tensor]) -> dict[str, Any]:
    """What a resumed run must match: the strategy's class name and its (K,) component sizes."""
    return {"algorithm": name, "component_sizes": [int(t.numel()) for t in global_state]}


def check_signature(path: str | os.PathLike, saved: dict[str, Any], expected: dict[str, Any]) -> None:
    """Raise ConfigError (one line) when a checkpoint was written by another algorithm or for
    components of other sizes than this run's."""
    if saved.get("algorithm") != expected["algorithm"]:
        raise ConfigError(f"checkpoint {str(path)!r} was written by {saved.get('algorithm')!r}; "
                          f"this run's algorithm is {expected['algorithm']!r}")
    if list(saved.get("component_sizes", [])) != expected["component_sizes"]:
        raise ConfigError(f"checkpoint {str(path)!r} holds components of sizes {saved.get('component_sizes')}; "
                          f"this run's are {expected['component_sizes']} (another model or K)")


def rng_states() -> dict[str, Any]:
    """Every global random generator's state, as tensors and plain values (weights_only-safe)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
