"""FedAvg (McMahan et al., AISTATS 2017, Algorithm 1): one global model.

The degenerate case of :class:`~fedgmi.algorithms.classifier_mixture.ClassifierMixture`: one
component, every sample weight 1, aggregation weight n_c. It has no mixture, so its mixture
metrics (assignment accuracy, proportion errors) are reported as NaN ("n/a"), never faked.
Personalised prediction is the global model's p(y | x).
"""

from __future__ import annotations

import torch

from fedgmi.algorithms.classifier_mixture import ClassifierMixture
from fedgmi.federated.messages import ClientTask
from fedgmi.federated.strategy import ClientState


class FedAvg(ClassifierMixture):
    """FedAvg: one model, local weighted-by-one training, example-weighted averaging.

    Args: as :class:`~fedgmi.algorithms.classifier_mixture.ClassifierMixture`.
    """

    models_mixture = False

    @property
    def num_models(self) -> int:
        return 1

    def sample_weights(self, task: ClientTask, x: torch.Tensor, y: torch.Tensor,
                       state: ClientState) -> tuple[torch.Tensor, ClientState]:
        """(n, 1) ones: every sample trains the one model; the aggregation weight is then n_c.
        No client state."""
        return torch.ones(len(x), 1, device=x.device), {}
