"""Checkpoints: one ``state`` dict written atomically through ``fabric.save``, read back with
``torch.load(weights_only=True)`` (tensors and plain containers only, never arbitrary objects).

A fit checkpoint holds the round counter and loop totals (:class:`LoopState`), the strategy's
state (global components, every client's state, e.g. its mixture proportions, and any server
state), the channel's per-client codec state (residuals, held copies), every random generator's state (torch, CUDA, numpy, Python), the logger's run id and a
signature that a resume (or ``fedgmi test``) must match: the strategy (class and component
sizes) and the scenario (:func:`scenario_signature`: dataset, inherent distributions, clients,
proportions, sample counts, seeds, and a fingerprint of the data actually drawn).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import random
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import torch

from fedgmi.atomic import copy_atomic, replacing
from fedgmi.data.shifts import Shift
from fedgmi.errors import ConfigError

CHECKPOINT_FORMAT = "fedgmi-checkpoint-v2"  # v2: the channel's state under "channel"


def save_checkpoint(fabric: lightning.Fabric, path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (plus a format tag) to ``path`` via a temporary file and a rename, so a
    crash or a full disk never leaves a half-written checkpoint (the previous one stays whole).
    Returns the path.

    Raises:
        WriteFailed: no room for it (one line: the file, its size, the room there was).
    """
    path = Path(path)
    state = {"format": CHECKPOINT_FORMAT, **state}
    if not fabric.is_global_zero:
        fabric.save(path.with_name(path.name + ".tmp"), state)  # the collective call; rank 0 writes
        return path
    with replacing(path, lambda: _serialized_size(state)) as tmp:
        fabric.save(tmp, state)
    return path


def _serialized_size(state: dict[str, Any]) -> int:
    """The bytes ``state`` takes as a checkpoint (written to memory)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.tell()


def save_round_checkpoint(fabric: lightning.Fabric, folder: Path, rounds_done: int,
                          state: dict[str, Any], keep: int) -> Path:
    """Write ``folder/round-NNNN.ckpt``, copy it to ``folder/last.ckpt`` (atomically too), and
    delete all but the ``keep`` newest round files. Returns the round file's path."""
    path = save_checkpoint(fabric, folder / f"round-{rounds_done:04d}.ckpt", state)
    if not fabric.is_global_zero:
        return path
    copy_atomic(path, folder / "last.ckpt")
    for old in sorted(folder.glob("round-*.ckpt"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` onto the CPU.

    Raises:
        ConfigError: a missing, truncated or foreign file (one line saying which).
    """
    path = Path(path)
    if path.is_dir():
        inside = path / "checkpoints" / "last.ckpt"
        hint = f", e.g. {str(inside)!r}" if inside.is_file() else " (a .ckpt file written by fedgmi fit)"
        raise ConfigError(f"ckpt_path = {str(path)!r} is a folder; give a checkpoint file{hint}")
    if not path.is_file():
        raise ConfigError(f"ckpt_path = {str(path)!r}: the checkpoint does not exist")
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


SCENARIO_FIELDS = ("dataset", "num_clients", "alpha", "proportions", "samples_per_client", "test_fraction", "seed")
"""The ``scenario`` settings that define the clients' data besides the kind of inherent
distribution (``scenario.shift``, with its K); a checkpoint is valid only for the same values."""


def scenario_signature(scenario, seed: int, unseen_fraction: float) -> dict[str, Any]:
    """What defines a run's scenario: the :data:`SCENARIO_FIELDS` of its config (dotted keys,
    plain values), the run's ``seed``, ``federation.unseen_fraction`` (which clients train),
    and ``scenario.data``: a SHA-256 fingerprint of every client's base-image indices, train
    and test (it differs when the same settings draw from another copy of the dataset, e.g. the
    full MNIST instead of its test split)."""
    config = scenario.config
    fields: dict[str, Any] = {f"scenario.{name}": _plain(getattr(config, name)) for name in SCENARIO_FIELDS}
    fields["scenario.shift"] = describe_shift(config.resolved_shift)
    if not isinstance(config.dataset, str):  # your own Dataset: its class and plain settings (a path)
        fields["scenario.dataset"] = describe_shift(config.dataset)
    if config.proportions is not None:
        fields["scenario.alpha"] = None  # explicit proportions override alpha
    digest = hashlib.sha256()
    for part in (*scenario.truth.base_index_train, *scenario.truth.base_index_test):
        digest.update(part.numpy().astype(np.int64).tobytes())
        digest.update(b"|")
    return {**fields, "seed": int(seed), "federation.unseen_fraction": float(unseen_fraction),
            "scenario.data": f"{len(scenario.clients)} clients, sha256 {digest.hexdigest()[:16]}"}


def describe_shift(shift) -> str:
    """The kind of inherent distribution and its settings as one line, e.g.
    ``Rotation(angles=[0, 90, 180])`` (``scenario.angles`` and the equivalent ``shift`` give
    the same line; a :class:`~fedgmi.data.shifts.Composed` shift lists its parts the same way)."""
    settings = {k: _plain(v) for k, v in sorted(vars(shift).items()) if not k.startswith("_")
                and isinstance(v, (int, float, str, bool, list, tuple, type(None)))}
    return f"{type(shift).__name__}({', '.join(f'{k}={v!r}' for k, v in settings.items())})"


class _Described(str):
    """A shift's description inside another's, without quotes."""

    def __repr__(self) -> str:
        return str(self)


def _plain(value: Any) -> Any:
    if isinstance(value, Shift):  # a part of a composed shift, shown as its own line
        return _Described(describe_shift(value))
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


DEPLOYMENT = {"deployment": True}
"""The scenario signature of a checkpoint written by a deployment's server, which never holds
the clients' data (:mod:`fedgmi.flower`): there is no scenario to sign."""


def check_scenario(path: str | os.PathLike, saved: dict[str, Any] | None, expected: dict[str, Any]) -> None:
    """Raise ConfigError (one line naming the first field that differs, with both values) when
    a checkpoint was written for another scenario than this run's. A deployment's checkpoint
    (:data:`DEPLOYMENT`) cannot be checked: a warning says so and the run goes on (the operator
    vouches that this run's scenario holds the nodes' data)."""
    if saved == DEPLOYMENT:
        warnings.warn(f"checkpoint {str(path)!r} was written by a deployment whose server never saw the clients' "
                      "data: this run's scenario cannot be checked against it (it must hold the nodes' data)",
                      stacklevel=2)
        return
    if saved is None:
        raise ConfigError(f"checkpoint {str(path)!r} holds no scenario signature (written by an older "
                          "fedgmi); it cannot be checked against this run's scenario")
    for key, value in expected.items():
        old = saved.get(key)
        if not _same(old, value):
            raise ConfigError(f"checkpoint {str(path)!r} was written for {key} = {old!r}; this run has "
                              f"{key} = {value!r} (resume and test need the checkpoint's scenario)")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0) or a == b
    return a == b


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
