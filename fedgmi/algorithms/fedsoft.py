"""FedSoft: soft clustered federated learning with proximal local updating (Ruan and Joe-Wong,
AAAI 2022, Algorithm 1; official code ycruan/FedSoft).

S = K cluster centres c_s. A client's importance weights u_cs are the share of its samples that
centre s fits best (lowest loss), floored at ``sigma`` (the paper's smoother) and renormalised;
they are also its mixture proportions. Each cluster draws its clients, among the loop's sampled
candidates, with probability proportional to v_sc = u_cs n_c (``round(candidates / S)`` each,
without replacement; the union trains). A selected client starts from sum_s u_cs c_s and
minimises its cross-entropy plus (lambda / 2) sum_s u_cs ||w - c_s||^2, which equals
(lambda / 2) ||w - sum_s u_cs c_s||^2 up to a constant because sum_s u_cs = 1, for
``local_epochs``. It uploads its one local model w_c (as a delta from its start) with
aggregation weight n_c, and its S importances as statistics. Down: S centres; up: one model,
one weight and S importances. With lambda = 0 and S = 1 this is FedAvg.

Server rule (``aggregation``):

- ``"sampled"`` (default, the official code, ``servers.py``): c_s = the uniform mean of w_c over
  the clients drawn for s (they were drawn with probability proportional to v_sc, so this
  estimates sum_c v_sc w_c / sum_c v_sc);
- ``"all_clients"``: every training client counts with v_sc, an unsampled one with its
  unchanged copy c_s: c_s += sum_{drawn} v_sc (w_c - c_s) / sum_{all c} v_sc (the official
  code's rule without selection, with stale copies; clients the server has not heard from
  count with uniform importance and the mean size).

Where this departs from the official code (documented, not hidden): importances are estimated
by the sampled clients with the received centres whenever they are sampled (the code: every
client every 2 rounds); a client starts from sum_s u_cs c_s each time instead of keeping a
persistent personal model; the local optimizer starts fresh each round (the code keeps one Adam
per client). Unseen clients have no labels, so no importances: uniform proportions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fedgmi.algorithms.classifier_mixture import ClassifierMixture, uninformative
from fedgmi.errors import ConfigError
from fedgmi.federated.messages import ClientReply, ClientTask
from fedgmi.federated.responsibilities import label_log_likelihood
from fedgmi.federated.strategy import ClientState


def importance_weights(evidence: torch.Tensor, sigma: float) -> torch.Tensor:
    """(K,) FedSoft importances from (N, K) per-sample evidence (-loss): the share of samples
    each component fits best, floored at ``sigma`` and renormalised; uniform when the evidence
    cannot tell components apart."""
    k = evidence.shape[1]
    if uninformative(evidence):
        return torch.full((k,), 1.0 / k, device=evidence.device)
    share = torch.nn.functional.one_hot(evidence.argmax(1), k).float().mean(0).clamp_min(sigma)
    return share / share.sum()


class FedSoft(ClassifierMixture):
    """FedSoft with K cluster centres.

    Args:
        proximal_weight: lambda of the proximal term (default 0.1, the official code's value
            for MNIST; lambda = 0 is no proximal term).
        sigma: Smoother: the least importance of a cluster (default 1e-4, as the code).
        **kwargs: as :class:`~fedgmi.algorithms.classifier_mixture.ClassifierMixture`
            (``aggregation``: see the module docstring).

    Raises:
        ConfigError: lambda < 0 or sigma outside [0, 1).
    """

    def __init__(self, proximal_weight: float = 0.1, sigma: float = 1e-4, **kwargs) -> None:
        super().__init__(**kwargs)
        if not proximal_weight >= 0:
            raise ConfigError(f"algorithm.init_args.proximal_weight = {proximal_weight!r} must be >= 0")
        if not 0 <= sigma < 1:
            raise ConfigError(f"algorithm.init_args.sigma = {sigma!r} must be in [0, 1)")
        self.proximal_weight, self.sigma = proximal_weight, sigma
        self.selected: dict[int, list[int]] = {}  # client -> clusters it was drawn for, this round
        self.importances: dict[int, torch.Tensor] = {}  # client -> u_c (K,), as last uploaded
        self.sizes: dict[int, int] = {}  # client -> n_c, as last uploaded

    # ------------------------------------------------------------------ server side
    def v(self, client_id: int, typical_size: float) -> np.ndarray:
        """(K,) v_sc = u_cs n_c from the client's last upload (uniform importance and
        ``typical_size`` for a client not heard from)."""
        k = self.num_models
        u = self.importances.get(client_id)
        u = np.full(k, 1.0 / k) if u is None else u.double().cpu().numpy()
        return u * self.sizes.get(client_id, typical_size)

    def typical_size(self) -> float:
        """The mean reported n_c (1 before any report)."""
        return float(np.mean(list(self.sizes.values()))) if self.sizes else 1.0

    def configure_round(self, round_idx: int, client_ids: Sequence[int]) -> list[ClientTask]:
        """Each cluster draws round(len(client_ids) / K) candidates by v_sc; each task expects
        one model back."""
        k = self.num_models
        ids = [int(c) for c in client_ids]
        per_cluster = max(1, round(len(ids) / k))
        rng = np.random.default_rng([self.seed, round_idx, 7])
        self.selected = {}
        typical = self.typical_size()
        for s in range(k):
            v = np.array([self.v(c, typical)[s] for c in ids], dtype=np.float64)
            eligible = int((v > 0).sum())
            for c in rng.choice(ids, size=min(per_cluster, eligible), replace=False, p=v / v.sum()):
                self.selected.setdefault(int(c), []).append(s)
        size = int(self.global_state[0].numel())
        return [ClientTask(t.round, t.client_id, t.seed, t.global_state, t.settings, algorithm=self.name,
                           upload_sizes=(size,)) for t in super().configure_round(round_idx, sorted(self.selected))]

    def aggregate(self, round_idx: int, replies: Sequence[ClientReply]) -> dict[str, float]:
        """Each centre from the models of the clients drawn for it (see the module docstring)."""
        if not replies:
            return {}
        for r in replies:
            self.sizes[r.client_id] = r.num_examples
            self.importances[r.client_id] = r.statistics["importances"].float().cpu()
        typical = self.typical_size()
        models = {r.client_id: self.start_point(self.global_state, r.statistics["importances"]) + r.updates[0]
                  for r in replies}
        new = []
        for s, centre in enumerate(self.global_state):
            drawn = [r.client_id for r in replies if s in self.selected.get(r.client_id, [])]
            new.append(self.new_centre(s, centre, drawn, models, typical) if drawn else centre)
        self.global_state = new
        return self.round_metrics(replies)

    def new_centre(self, s: int, centre: torch.Tensor, drawn: list[int], models: dict[int, torch.Tensor],
                   typical: float) -> torch.Tensor:
        """Centre s after the round, under the ``aggregation`` rule."""
        if self.aggregation == "sampled":
            return torch.stack([models[c].float() for c in drawn]).mean(0).to(centre.dtype)
        v = {c: float(self.v(c, typical)[s]) for c in drawn}
        known = sum(float(self.v(c, typical)[s]) for c in self.sizes)
        unknown = max(float(self.spec.train_examples or 0) - sum(self.sizes.values()), 0.0) / self.num_models
        step = sum(v[c] * (models[c] - centre) for c in drawn) / max(known + unknown, 1e-12)
        return (centre + step).to(centre.dtype)

    def state_dict(self) -> dict[str, Any]:
        """The base state plus the server's records of every client's importances and size."""
        return {**super().state_dict(), "importances": {c: u.cpu() for c, u in self.importances.items()},
                "sizes": {c: torch.tensor(n) for c, n in self.sizes.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.importances = {int(c): u for c, u in state["importances"].items()}
        self.sizes = {int(c): int(n) for c, n in state["sizes"].items()}

    # ------------------------------------------------------------------ client side
    def client_update(self, task: ClientTask, data, state: ClientState) -> tuple[ClientReply, ClientState]:
        """Importances, then one proximal local model from sum_s u_cs c_s; the state is the
        importances (the client's proportions)."""
        device = self.fabric.device
        gen = torch.Generator(device).manual_seed(task.seed)
        x, y = data.x_train.to(device), data.y_train.to(device)
        _, class_lp = self.component_outputs(x, state=task.global_state)
        u = importance_weights(label_log_likelihood(class_lp, y), self.sigma)  # (K,)
        start = self.start_point(task.global_state, u)
        local = self.train_model(start, x, y, torch.ones(len(x), device=device), gen, state,
                                 prox_center=start, prox_weight=self.proximal_weight)
        reply = task.reply(len(x), (local.theta - start,), [float(len(x))], {"cross_entropy": float(local.losses[0])},
                           statistics={"importances": u.float().cpu()})
        return reply, {**local.optimizer_state, "pi": u}

    @staticmethod
    def start_point(centres: Sequence[torch.Tensor], u: torch.Tensor) -> torch.Tensor:
        """(P,) sum_s u_s c_s."""
        return sum(float(u_s) * c for u_s, c in zip(u, centres))
