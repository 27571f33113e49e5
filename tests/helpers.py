"""Small real-data builders shared by tests (digits scenario, a small FedGMI)."""

from __future__ import annotations

import lightning

from fedgmi.algorithms.gmi import FedGMI
from fedgmi.data import ScenarioConfig, build_scenario
from fedgmi.federated.strategy import ProblemSpec
from fedgmi.models import ComponentVAE


def digits_scenario(base, num_clients: int = 6, seed: int = 3):
    """A PM scenario on scikit-learn's digits (K = 3 rotations), 100-140 samples per client."""
    cfg = ScenarioConfig(dataset="digits", num_clients=num_clients, samples_per_client=(100, 140), seed=seed)
    return build_scenario(cfg, base=base)


def small_component(shape):
    return ComponentVAE(shape, hidden_dims=(32,), latent_dim=4)


def make_fedgmi(scenario, initialize: bool = True, fabric: lightning.Fabric | None = None, **kw) -> FedGMI:
    """A set-up FedGMI with small VAEs (on the CPU in 32-true unless ``fabric`` is given),
    topic-initialised unless told otherwise."""
    kw = {"topic_clusters": 12, "topic_restarts": 3, **kw}
    strategy = FedGMI(component=small_component, **kw)
    spec = ProblemSpec(scenario.image_shape, scenario.num_components, scenario.num_classes,
                       len(scenario.clients))
    strategy.setup(spec, fabric or lightning.Fabric(accelerator="cpu", devices=1), seed=0)
    if initialize:
        run_initialize(strategy, scenario.clients)
    return strategy


def run_initialize(strategy, clients):
    """The strategy's initialisation stage as the loop runs it (client states stored)."""
    init = strategy.initialize(clients)
    strategy.client_state.update(init.client_states)
    return init


def run_client(strategy, task, data):
    """One client update as the loop runs it: from the client's stored state, storing its new
    state; returns the reply."""
    reply, state = strategy.client_update(task, data, strategy.client_state.get(task.client_id, {}))
    strategy.client_state[task.client_id] = state
    return reply


def wandb_history(run_dir, skip=("_", "time/", "plots/", "trainer/")) -> dict[int, dict]:
    """The history rows of every offline W&B run under ``run_dir/wandb``, merged by ``_step``
    as ``wandb sync`` merges the sessions of a resumed run; keys starting with ``skip`` left
    out. Reads the ``.wandb`` files directly (W&B's record log: 7-byte header, 32 KiB blocks of
    records with a 7-byte header each: CRC, length, type)."""
    import json
    import struct
    from pathlib import Path

    from wandb.proto import wandb_internal_pb2

    def records(path):
        data, pos, buf = Path(path).read_bytes(), 7, b""
        while pos + 7 <= len(data):
            left = 32768 - pos % 32768
            if left < 7:
                pos += left
                continue
            _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            pos += 7
            if kind == 0 and length == 0:
                pos += left - 7
                continue
            buf += data[pos:pos + length]
            pos += length
            if kind in (1, 4):  # FULL or LAST
                yield buf
                buf = b""

    merged: dict[int, dict] = {}
    for path in sorted(Path(run_dir).glob("wandb/offline-run-*/*.wandb")):
        for data in records(path):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            if record.WhichOneof("record_type") != "history":
                continue
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            kept = {k: v for k, v in row.items() if not k.startswith(skip)}
            if kept:
                merged.setdefault(int(row["_step"]), {}).update(kept)
    return merged


def load_benchmark(name: str):
    """The module ``benchmarks/<name>.py`` (benchmarks/ is on sys.path, as when it runs as a
    script, so that one benchmark can import another)."""
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
