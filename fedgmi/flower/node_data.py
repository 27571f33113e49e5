"""A Flower node's own data: one tensor file per node, named in its node config
(``--node-config "data-file='nodes/node0.pt'"``, relative to the SuperNode's working
directory). The node then builds no scenario and reads no shared data folder; the server never
reads it.

The file (``torch.save`` of plain tensors, read with ``weights_only=True``)::

    {"format": "fedgmi-node-data/1",
     "image_shape": [C, H, W], "num_classes": Y,
     "clients": {client_id: {"x_train": (n_train, C*H*W) float32 in [0, 1], "y_train": (n_train,) int64,
                             "x_test": (n_test, C*H*W) float32, "y_test": (n_test,) int64,
                             # optional, evaluation only (all three or none):
                             "z_train": (n_train,) int64, "z_test": (n_test,) int64,
                             "proportions": (K_true,) float64}},
     "component_names": [...]}   # optional, with the z's

``z_*`` is the inherent distribution of each sample, where the node's holder knows it: the
ground-truth scores (assignment accuracy, proportion error, per-component tables) are then
computed on the node and summed on the server; without it they are NaN.

``python -m fedgmi.flower split --config FILE --nodes 0-4 5-9 --out DIR`` writes these files
from a simulated scenario (one per node, each with only its clients), so that a deployment on
loopback can be compared with the in-process run of the same split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedgmi.data.scenario import ClientData
from fedgmi.errors import ConfigError
from fedgmi.federated.clients import ClientTruth, NodeClient, scenario_clients

FORMAT = "fedgmi-node-data/1"
PARTS = ("x_train", "y_train", "x_test", "y_test")
TRUTH = ("z_train", "z_test", "proportions")


@dataclass(frozen=True)
class NodeData:
    """What a node holds: its clients (with their ground truth where given) and the data's shape.

    Attributes:
        clients: Client id -> :class:`~fedgmi.federated.clients.NodeClient`.
        image_shape: (C, H, W).
        num_classes: Y.
        component_names: Names of the true components (empty without ground truth).
    """

    clients: dict[int, NodeClient]
    image_shape: tuple[int, ...]
    num_classes: int
    component_names: tuple[str, ...] = ()

    @property
    def client_ids(self) -> list[int]:
        return sorted(self.clients)

    def describe(self) -> dict[str, Any]:
        """What the node tells the server (sizes and shapes only): ``image-shape``,
        ``num-classes``, ``train-sizes`` (in client-id order), ``has-truth``,
        ``component-names``."""
        return {"image-shape": [int(s) for s in self.image_shape], "num-classes": int(self.num_classes),
                "train-sizes": [len(self.clients[c].data.x_train) for c in self.client_ids],
                "has-truth": all(c.truth is not None for c in self.clients.values()),
                "component-names": list(self.component_names)}


def _client(path: str, cid: int, entry: Any, dim: int) -> NodeClient:
    """One client's entry of a node file, checked."""
    if not isinstance(entry, dict) or any(k not in entry for k in PARTS):
        raise ConfigError(f"node config: data-file = {path!r}: client {cid} needs {', '.join(PARTS)}")
    x_train, y_train, x_test, y_test = (entry[k] for k in PARTS)
    for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x.dim() != 2 or x.shape[1] != dim or y.shape != (len(x),):
            raise ConfigError(f"node config: data-file = {path!r}: client {cid}'s x_{name} {tuple(x.shape)} and "
                              f"y_{name} {tuple(y.shape)} must be (n, {dim}) and (n,)")
    truth = None
    given = [k for k in TRUTH if k in entry]
    if given and len(given) != len(TRUTH):
        raise ConfigError(f"node config: data-file = {path!r}: client {cid} gives {', '.join(given)}; the ground "
                          f"truth is {', '.join(TRUTH)} together, or none of them")
    if given:
        truth = ClientTruth(entry["z_train"].long(), entry["z_test"].long(), entry["proportions"].double(),
                            int(entry["proportions"].numel()))
    data = ClientData(cid, x_train.float(), y_train.long(), x_test.float(), y_test.long())
    return NodeClient(data, truth)


def load_node_data(path: str) -> NodeData:
    """Read and check a node file (see the module docstring).

    Raises:
        ConfigError: a missing or unreadable file, another format, or a client entry of the wrong
            shape (one line naming the file).
    """
    if not Path(path).is_file():
        raise ConfigError(f"node config: data-file = {path!r} is not a file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets one line
        raise ConfigError(f"node config: data-file = {path!r} cannot be read ({type(err).__name__})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ConfigError(f"node config: data-file = {path!r} is not a fedgmi node file (format {FORMAT!r}; "
                          "write one with `python -m fedgmi.flower split`)")
    shape = tuple(int(s) for s in raw["image_shape"])
    dim = int(torch.tensor(shape).prod())
    clients = {int(c): _client(path, int(c), e, dim) for c, e in raw["clients"].items()}
    if not clients:
        raise ConfigError(f"node config: data-file = {path!r} holds no client")
    return NodeData(clients, shape, int(raw["num_classes"]), tuple(raw.get("component_names", ())))


def node_file(scenario: Any, client_ids: Sequence[int], truth: bool = True) -> dict[str, Any]:
    """The node file (a dict for ``torch.save``) of ``client_ids`` of a simulated scenario."""
    held = scenario_clients(scenario)
    clients = {}
    for cid in client_ids:
        c = held[int(cid)]
        entry = {k: getattr(c.data, k).clone() for k in PARTS}
        if truth:
            entry.update(z_train=c.truth.z_train.clone(), z_test=c.truth.z_test.clone(),
                         proportions=c.truth.proportions.clone())
        clients[int(cid)] = entry
    out = {"format": FORMAT, "image_shape": list(scenario.image_shape), "num_classes": int(scenario.num_classes),
           "clients": clients}
    if truth:
        out["component_names"] = list(scenario.component_names)
    return out
