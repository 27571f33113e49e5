"""FedEM (Marfoq, Neglia, Bellet, Kameni, Vidal, NeurIPS 2021, Algorithm 1).

Each client's distribution is a mixture of K shared components with client weights pi_c; the
components are K classifiers. One round, on client c with the received components:

    E-step  q_ik = softmax_k(log pi_ck - l(h_k(x_i), y_i)),  l the cross-entropy, so
            log p_k(y_i | x_i) = -l (Marfoq et al., eq. 7);
    M-step  pi_ck = mean_i q_ik (eq. 8); component k trained on sum_i q_ik l(h_k(x_i), y_i)
            (eq. 9; Adam is invariant to the loss scale, so the 1/n_c vs 1/sum q normalisation
            does not matter);

and the server averages every component over the clients with weights n_c (Algorithm 1).
Down: K models; up: K models and K weights. The E-step uses the labels: a client without
labels (unseen) keeps uniform proportions.
"""

from __future__ import annotations

import torch

from fedgmi.algorithms.classifier_mixture import ClassifierMixture
from fedgmi.federated.messages import ClientTask
from fedgmi.federated.responsibilities import responsibilities
from fedgmi.federated.strategy import ClientState


class FedEM(ClassifierMixture):
    """FedEM with K classifier components (args as ClassifierMixture)."""

    def estep(self, task: ClientTask, x: torch.Tensor, y: torch.Tensor,
              pi: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(q, pi)``: (n, K) q_ik = softmax_k(log pi_ck + evidence_ik) with the client's
        current (K,) proportions ``pi`` (uniform when ``None``), and the updated (K,)
        pi_c = mean_i q_ik."""
        k = len(task.global_state)
        pi = torch.full((k,), 1.0 / k, device=x.device) if pi is None else pi
        q = responsibilities(pi.log(), self.evidence(*self.component_outputs(x, state=task.global_state), y))
        new_pi = q.mean(0).clamp_min(1e-6)
        return q, new_pi / new_pi.sum()

    def sample_weights(self, task: ClientTask, x: torch.Tensor, y: torch.Tensor,
                       state: ClientState) -> tuple[torch.Tensor, ClientState]:
        """The E-step's q (n, K); the state is the updated proportions."""
        q, pi = self.estep(task, x, y, state.get("pi"))
        return q, {"pi": pi}

    def aggregation_weights(self, r: torch.Tensor, num_examples: int) -> torch.Tensor:
        """(K,) n_c for every component (FedEM averages components with weights n_c / n)."""
        return torch.full((r.shape[1],), float(num_examples), device=r.device)
