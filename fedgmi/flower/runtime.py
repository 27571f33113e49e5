"""What the ServerApp and the ClientApp both build from a Flower run config: the fedgmi config
(the same file and overrides as ``fedgmi fit``), and which clients a node holds.

Run config keys (``[tool.flwr.app.config]`` of ``fedgmi/flower/app/pyproject.toml``, or
``flwr run ... --run-config 'key=value ...'``):

- ``config`` (str): the fedgmi YAML file, absolute, relative to the working directory, or
  relative to the fedgmi checkout (e.g. ``configs/pm_digits.yaml``);
- ``overrides`` (str): more ``fedgmi fit`` arguments, e.g. ``"--federation.rounds 3 --seed 1"``
  (``--output_dir`` is read by the server only);
- ``ckpt-path`` (str, server only): resume from this checkpoint, as ``fedgmi fit --ckpt_path``;
- ``round-timeout`` (float, seconds): how long the server waits for a round's replies
  (clients that do not reply by then are left out of the round, counted in clients_failed);
- ``node-timeout`` (float, seconds): how long the server waits, before round 0, for nodes that
  hold every training client.

Node config keys (``flower-supernode --node-config``; the simulation engine sets the
``partition-id``/``num-partitions`` pair itself):

- ``data-file`` (str): the node's own data, a tensor file (:mod:`fedgmi.flower.node_data`);
  the node then builds no scenario and reads no data folder (a deployment);
- else ``client-ids`` (str): the fedgmi client ids whose data the node holds, e.g. ``"3"``,
  ``"0,4,7"`` or ``"0-9"``;
- else ``partition-id`` and ``num-partitions`` (int): the node holds the clients c with
  c % num-partitions == partition-id;
- ``min-group`` (int >= 1, optional): the node's own floor on the smallest group of its samples
  a client step's upload may describe (FedGMI's ``topic_min_group``, which the server sends
  with the step): the node uses the larger of the two (:func:`floored`).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import lightning

from fedgmi.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]

DEFAULTS: dict[str, Any] = {"config": "configs/pm_digits.yaml", "overrides": "", "ckpt-path": "",
                            "round-timeout": 600.0, "node-timeout": 120.0}


@dataclass(frozen=True)
class RunSettings:
    """The Flower run config, checked (see the module docstring).

    Attributes:
        config: Path of the fedgmi YAML file (resolved).
        overrides: More ``fedgmi fit`` arguments, split.
        ckpt_path: Checkpoint to resume from (server only), or ``""``.
        round_timeout: Seconds the server waits for a round's replies (> 0).
        node_timeout: Seconds the server waits for nodes holding every training client (> 0).
    """

    config: str
    overrides: tuple[str, ...] = ()
    ckpt_path: str = ""
    round_timeout: float = 600.0
    node_timeout: float = 120.0

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunSettings:
        """Read and check a Flower run config (missing keys take :data:`DEFAULTS`).

        Raises:
            ConfigError: an unknown key, a config file that does not exist, or a timeout <= 0
                (one line naming the key, the value and what is allowed).
        """
        unknown = sorted(set(run_config) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"flower run config: unknown key {unknown[0]!r}; allowed: {sorted(DEFAULTS)}")
        values = {**DEFAULTS, **run_config}
        for key in ("round-timeout", "node-timeout"):
            if not isinstance(values[key], (int, float)) or values[key] <= 0:
                raise ConfigError(f"flower run config: {key} = {values[key]!r} must be a number of seconds > 0")
        return cls(resolve_config(str(values["config"])), tuple(shlex.split(str(values["overrides"]))),
                   str(values["ckpt-path"]), float(values["round-timeout"]), float(values["node-timeout"]))

    def fit_args(self, server: bool) -> list[str]:
        """``fedgmi fit`` arguments; the client's have no checkpoint and no output folder."""
        args = ["fit", "--config", self.config, *self.overrides]
        if server:
            return args + (["--ckpt_path", self.ckpt_path] if self.ckpt_path else [])
        return _without(args, "--output_dir")


def _without(args: list[str], flag: str) -> list[str]:
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def resolve_config(path: str) -> str:
    """``path`` if it exists, else the same path under the fedgmi checkout.

    Raises:
        ConfigError: neither exists.
    """
    for candidate in (Path(path), REPO_ROOT / path):
        if candidate.is_file():
            return str(candidate.resolve())
    raise ConfigError(f"flower run config: config = {path!r} is not a file (relative to the working "
                      f"directory or to {REPO_ROOT})")


def parse_range(key: str, text: str, num_clients: int) -> list[int]:
    """Client ids from ``"3"``, ``"0,4,7"`` or ``"0-9"`` (inclusive), sorted.

    Raises:
        ConfigError: malformed, or an id outside 0 .. num_clients - 1.
    """
    ids: set[int] = set()
    try:
        for part in str(text).replace(" ", "").split(","):
            low, _, high = part.partition("-")
            ids.update(range(int(low), int(high or low) + 1))
    except ValueError:
        raise ConfigError(f"node config: {key} = {text!r} is not a list of client ids such as '3', '0,4,7' "
                          "or '0-9'") from None
    bad = sorted(c for c in ids if not 0 <= c < num_clients)
    if bad or not ids:
        raise ConfigError(f"node config: {key} = {text!r} names client {bad[0] if bad else None}; "
                          f"allowed: ids 0 .. {num_clients - 1}")
    return sorted(ids)


def node_clients(node_config: Mapping[str, Any], num_clients: int) -> list[int]:
    """The client ids a node holds, from its node config (see the module docstring).

    Raises:
        ConfigError: neither ``client-ids`` nor ``partition-id``/``num-partitions``, or a bad value
            (one line naming the key, the value and what is allowed).
    """
    if "client-ids" in node_config:
        return parse_range("client-ids", node_config["client-ids"], num_clients)
    if "partition-id" in node_config and "num-partitions" in node_config:
        part, parts = node_config["partition-id"], node_config["num-partitions"]
        if not isinstance(parts, int) or parts < 1:
            raise ConfigError(f"node config: num-partitions = {parts!r} must be an integer >= 1")
        if not isinstance(part, int) or not 0 <= part < parts:
            raise ConfigError(f"node config: partition-id = {part!r} must be an integer in 0 .. {parts - 1}")
        ids = list(range(part, num_clients, parts))
        if not ids:
            raise ConfigError(f"node config: partition-id = {part} holds no client of {num_clients}; "
                              f"allowed: 0 .. {min(parts, num_clients) - 1}")
        return ids
    raise ConfigError(f"node config: {dict(node_config)!r} names no clients; give client-ids (e.g. '0,4,7') or "
                      "partition-id and num-partitions")


@dataclass
class ClientSide:
    """What a node builds from the run config: the strategy (set up as the server sets it up) and
    the data it holds: its own node file (``data-file``), or a simulated scenario (every client's
    data; the node uses only its own clients')."""

    strategy: Any
    scenario: Any
    seed: int
    strategy_hash: str = ""
    node: Any = None  # fedgmi.flower.node_data.NodeData, with a data-file
    _scenario_clients: list = field(default_factory=list)

    def held(self, node_config: Mapping[str, Any]) -> list[int]:
        """The client ids this node holds (its file's, or its node config's of the scenario).

        Raises:
            ConfigError: a bad node config (one line).
        """
        if self.node is not None:
            return self.node.client_ids
        return node_clients(node_config, len(self.scenario.clients))

    def node_client(self, client_id: int):
        """Client ``client_id`` as this node holds it (its data and, where known, its ground truth)."""
        if self.node is not None:
            return self.node.clients[int(client_id)]
        if not self._scenario_clients:  # built once, not for every client of every message
            from fedgmi.federated.clients import scenario_clients

            self._scenario_clients.extend(scenario_clients(self.scenario))
        return self._scenario_clients[int(client_id)]

    def describe(self, node_config: Mapping[str, Any]) -> dict[str, Any]:
        """What the node tells the server when asked which clients it holds: their ids and, with
        a data file, the sizes and shapes the server sets the strategy up with."""
        ids = self.held(node_config)
        if self.node is not None:
            return {"client-ids": ids, **self.node.describe()}
        sizes = [len(self.scenario.clients[c].x_train) for c in ids]
        return {"client-ids": ids, "image-shape": list(self.scenario.image_shape),
                "num-classes": int(self.scenario.num_classes), "train-sizes": sizes, "has-truth": True,
                "component-names": list(self.scenario.component_names)}


def floored(shared: Mapping[str, Any], node_config: Mapping[str, Any]) -> dict[str, Any]:
    """A client step's shared settings with the node's ``min-group`` applied: a request's
    ``min_group`` (a 0-d tensor) is raised to the node's floor; other requests pass unchanged.

    Raises:
        ConfigError: ``min-group`` is not an integer >= 1 (one line).
    """
    if "min-group" not in node_config:
        return dict(shared)
    floor = node_config["min-group"]
    if isinstance(floor, bool) or not isinstance(floor, int) or floor < 1:
        raise ConfigError(f"node config: min-group = {floor!r} must be an integer >= 1")
    if "min_group" not in shared:
        return dict(shared)
    import torch

    return {**shared, "min_group": torch.tensor(max(int(shared["min_group"]), floor))}


def data_file(node_config: Mapping[str, Any]) -> str:
    """The node config's ``data-file`` ("" when the node uses a simulated scenario).

    Raises:
        ConfigError: ``data-file`` together with ``client-ids`` (the file says which clients).
    """
    path = str(node_config.get("data-file", ""))
    if path and "client-ids" in node_config:
        raise ConfigError(f"node config: data-file = {path!r} and client-ids = {node_config['client-ids']!r}: give "
                          "one (a data file holds its clients' ids)")
    return path


@lru_cache(maxsize=4)
def client_side(config: str, overrides: tuple[str, ...], data: str = "") -> ClientSide:
    """Build (once per process and run config) the client side of a run: parse and check the
    fedgmi config as ``fedgmi fit`` does, then either read the node's own ``data`` file
    (:mod:`fedgmi.flower.node_data`; no scenario is built, no shared folder read) or build the
    scenario, and set the strategy up on a one-device Fabric (no loggers, no run folder).

    Raises:
        ConfigError: a bad config value or node file (one line).
    """
    from fedgmi.federated.strategy import ProblemSpec
    from fedgmi.run_config import build_parser, instantiate

    parser = build_parser()
    cfg = parser.parse_args(RunSettings(config, overrides).fit_args(server=False))
    objs, scenario, _ = instantiate(parser, cfg, data=not data)
    fabric = lightning.Fabric(accelerator=objs.fabric.accelerator, devices=1, precision=objs.fabric.precision)
    seed = int(cfg.fit.seed)
    lightning.seed_everything(seed, verbose=False)
    node = None
    if data:
        from fedgmi.flower.node_data import load_node_data

        node = load_node_data(data)
        if objs.algorithm.uses_ground_truth:
            raise ConfigError(f"algorithm = {objs.algorithm.name} needs the scenario's ground truth on every "
                              "client: a simulation only, not a node with its own data file")
        k = objs.algorithm.num_components or objs.scenario.num_components
        spec = ProblemSpec(node.image_shape, int(k), node.num_classes, int(objs.scenario.num_clients))
    else:
        train_ids, _ = objs.federation.split_clients(len(scenario.clients))
        spec = ProblemSpec.of(scenario, objs.algorithm, sum(len(scenario.clients[c].x_train) for c in train_ids))
    objs.algorithm.setup(spec, fabric, seed)
    if objs.algorithm.uses_ground_truth:  # the Oracle (simulation only): its clients' true components
        objs.algorithm.attach_ground_truth(scenario.truth)
    return ClientSide(objs.algorithm, scenario, seed, node=node)
