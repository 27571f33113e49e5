"""Oracle: told every sample's true component; the upper bound of the comparison.

Component k is trained on exactly the samples of true component k (one-hot weights from the
ground truth), averaged per component with their counts as weights. At evaluation its
log p_k(x) is 0 for the true component and -1e4 for the others, so its assignments and
proportions are the truth, and its personalised prediction is the true component's classifier.
The truth reaches it only through :meth:`attach_ground_truth` (the loop and evaluation call
that only for a strategy declaring ``uses_ground_truth``).
"""

from __future__ import annotations

import torch

from fedgmi.algorithms.classifier_mixture import ClassifierMixture
from fedgmi.federated.messages import ClientTask
from fedgmi.federated.strategy import ClientState

#: log p_k(x) of a component a sample does not belong to (exp underflows to 0 in float32).
OFF_COMPONENT_LOG_DENSITY = -1e4


class Oracle(ClassifierMixture):
    """The oracle (args as ClassifierMixture)."""

    uses_ground_truth = True
    label_evidence = False

    def attach_ground_truth(self, truth) -> None:
        """Keep the scenario's GroundTruth (per-client true components of every sample)."""
        self.truth = truth

    def true_components(self, client_id: int, part: str, n: int) -> torch.Tensor:
        """(n,) true components of a client's "train" or "test" part, or of the "pool" (the test
        parts of every client, in client order; :mod:`fedgmi.federated.evaluation`).

        Raises:
            RuntimeError: no truth attached; ValueError: ``n`` does not match the part's size.
        """
        if getattr(self, "truth", None) is None:
            raise RuntimeError("the Oracle needs attach_ground_truth before use")
        if part == "pool":
            z = torch.cat(list(self.truth.z_test))
        else:
            z = (self.truth.z_train if part == "train" else self.truth.z_test)[int(client_id)]
        if len(z) != n:
            raise ValueError(f"client {client_id} {part} part has {len(z)} samples, got {n}")
        return z.to(self.fabric.device)

    def sample_weights(self, task: ClientTask, x: torch.Tensor, y: torch.Tensor,
                       state: ClientState) -> tuple[torch.Tensor, ClientState]:
        """(n, K) one-hot of the true components; the state's proportions are their fractions."""
        r = torch.nn.functional.one_hot(self.true_components(task.client_id, "train", len(x)),
                                        len(task.global_state)).float()
        return r, {"pi": r.mean(0)}

    def client_component_outputs(self, client_id, part, x, estimator=None, num_samples=None, generator=None):
        """log p_k(x) = 0 on the true component, -1e4 elsewhere; the K classifiers."""
        _, class_lp = self.component_outputs(x)
        z = self.true_components(client_id, part, len(x))
        log_px = torch.full(class_lp.shape[:2], OFF_COMPONENT_LOG_DENSITY, device=class_lp.device)
        return log_px.scatter(1, z.view(-1, 1), 0.0), class_lp
