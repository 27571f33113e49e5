"""Local training: every client trains its own model and nothing is communicated.

Each client's model starts from the same seeded initial model (component 0 of
:class:`~fedgmi.algorithms.fedavg.FedAvg`) and is kept in the client's state between the
rounds it is sampled in. Tasks carry no parameters and replies no updates, so both byte counts
are 0. A client that never trained (an unseen client) has only the untrained initial model;
its accuracy is reported as measured. No mixture: mixture metrics are NaN ("n/a").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedgmi.algorithms.fedavg import FedAvg
from fedgmi.federated.messages import ClientReply, ClientTask, derive_seed
from fedgmi.federated.strategy import ClientState


class Local(FedAvg):
    """No communication; per-client models (the lower bound of collaboration).

    Args: as :class:`~fedgmi.algorithms.classifier_mixture.ClassifierMixture`.
    """

    def configure_round(self, round_idx: int, client_ids: Sequence[int]) -> list[ClientTask]:
        """Tasks without parameters (0 bytes down)."""
        return [ClientTask(round_idx, int(c), derive_seed(self.seed, round_idx, int(c)), (), algorithm=self.name)
                for c in client_ids]

    def client_model(self, client_id: int) -> torch.Tensor:
        """(P,) the client's own model, or the shared initial model if it never trained."""
        return self.client_state.get(int(client_id), {}).get("theta", self.global_state[0])

    def client_update(self, task: ClientTask, data, state: ClientState) -> tuple[ClientReply, ClientState]:
        """Train the client's own model (its state, model-sized: Local's point); upload nothing
        (0 bytes up)."""
        device = self.fabric.device
        gen = torch.Generator(device).manual_seed(task.seed)
        x, y = data.x_train.to(device), data.y_train.to(device)
        local = self.train_model(state.get("theta", self.global_state[0]), x, y, torch.ones(len(x), device=device), gen,
                                 state)
        return (task.reply(len(x), (), (), {"cross_entropy": float(local.losses[0])}),
                {**local.optimizer_state, "theta": local.theta})

    def aggregate(self, round_idx: int, replies: Sequence[ClientReply]) -> dict[str, float]:
        """Nothing to aggregate; the round's mean training cross-entropy."""
        return self.round_metrics(replies) if replies else {}

    def client_component_outputs(self, client_id, part, x, estimator=None, num_samples=None, generator=None):
        """Outputs of the client's own model."""
        return self.component_outputs(x, state=[self.client_model(client_id)])
