"""IFCA, the Iterative Federated Clustering Algorithm (Ghosh et al., NeurIPS 2020 / IEEE
Trans. Inf. Theory 2022, Algorithm 2 with model averaging).

The server sends all K cluster models; each client estimates its cluster as
j = arg-min_k (its mean loss under model k) = arg-max_k sum_i log p_k(y_i | x_i), trains model j
alone for ``local_epochs`` and uploads its delta; the server averages each cluster's deltas over
the clients that chose it, weighted by n_c. Down: K models; up: one model and K weights.

A hard clustering: a client's proportions are the one-hot of its cluster, reported as such (the
honest comparison). At evaluation a client picks its cluster the same way from its labelled
training part; a client without labels (unseen) cannot choose, and gets uniform proportions
(the average of the K models).
"""

from __future__ import annotations

import torch

from fedgmi.algorithms.classifier_mixture import ClassifierMixture, uninformative
from fedgmi.federated.messages import ClientTask
from fedgmi.federated.responsibilities import label_log_likelihood
from fedgmi.federated.strategy import ClientState


def hard_cluster(evidence: torch.Tensor) -> torch.Tensor:
    """(K,) one-hot of arg-max_k sum_i evidence_ik (IFCA's lowest-loss cluster); uniform when
    the (N, K) evidence cannot tell the components apart."""
    k = evidence.shape[1]
    if uninformative(evidence):
        return torch.full((k,), 1.0 / k, device=evidence.device)
    return torch.nn.functional.one_hot(evidence.sum(0).argmax(), k).float()


class IFCA(ClassifierMixture):
    """IFCA with K cluster models (args as ClassifierMixture)."""

    def sample_weights(self, task: ClientTask, x: torch.Tensor, y: torch.Tensor,
                       state: ClientState) -> tuple[torch.Tensor, ClientState]:
        """(n, K) with the column of the chosen cluster all ones, the others zero; the state is
        the one-hot proportions."""
        _, class_lp = self.component_outputs(x, state=task.global_state)
        pi = hard_cluster(label_log_likelihood(class_lp, y))
        return pi.unsqueeze(0).expand(len(x), -1).contiguous(), {"pi": pi}

    def estimate_client_proportions(self, evidence, start, iters) -> torch.Tensor:
        """One-hot of the lowest-loss cluster (uniform without labels)."""
        return hard_cluster(evidence)
