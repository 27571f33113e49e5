"""Shared machinery of the peers: K classifier models trained with per-sample weights and
averaged per component.

A component k is a classifier p_k(y | x) (the same head architecture as FedGMI's), optionally
followed in its parameter vector by density parameters (FedGMM's Gaussian moments). One round:
the client computes (n, K) per-sample weights r_ik (how they are made is what tells the peers
apart: all ones for FedAvg, a one-hot cluster for IFCA, the EM posterior for FedEM, the truth
for the Oracle), trains component k on its data weighted by r_ik, and uploads each trained
component's delta with an aggregation weight; the server averages each component's deltas with
those weights (:func:`~fedgmi.federated.aggregation.aggregate_components`). With K = 1 and
weights n_c this is FedAvg (McMahan et al. 2017, Algorithm 1), which is the degenerate case of
this class (:class:`fedgmi.algorithms.fedavg.FedAvg`).

Local training is the shared client worker's (:mod:`fedgmi.federated.worker`): one reusable
model set up with Fabric, parameters copied in from a (P,) vector, a fresh optimizer state for
every client and component.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.nn.utils import parameters_to_vector

from fedgmi.federated.messages import ClientReply, ClientTask
from fedgmi.federated.responsibilities import label_log_likelihood
from fedgmi.federated.strategy import (
    ClientState,
    ParameterVectorStrategy,
    ProblemSpec,
    check_aggregation,
)
from fedgmi.federated.worker import (
    ClientWorker,
    LocalTraining,
    LocalUpdate,
    OptimizerFactory,
    carried_optimizer_state,
    initial_vectors,
)
from fedgmi.models.heads import MLPClassifier, weighted_cross_entropy

ClassifierFactory = Callable[[tuple[int, ...], int], torch.nn.Module]


def uninformative(evidence: torch.Tensor) -> bool:
    """True when every row of (N, K) ``evidence`` is constant (e.g. no labels for a method whose
    evidence is the label likelihood): it then cannot tell components apart."""
    return bool((evidence == evidence[:, :1]).all())


class ClassifierMixture(ParameterVectorStrategy):
    """Base of the peers: K classifiers trained with per-sample weights, averaged per component.

    Subclasses implement :meth:`sample_weights` (the (n, K) per-sample training weights and the
    client's new state), and may override :meth:`num_models`, :meth:`aggregation_weights` and
    the density hooks (:meth:`density_size`, :meth:`log_density`, :meth:`density_update`).

    Args:
        classifier: Builds one component's head from (image_shape, num_classes); default
            ``MLPClassifier`` 784-200-10 (the configs use FedGMI's CNN 8-16/64).
        optimizer: Builds the local optimizer; default Adam(lr=1e-3, fused=True), fresh state
            per client and component (as FedGMI).
        local_epochs: Passes over the client's data per trained component per round.
        batch_size: Local mini-batch size.
        weight_floor: Samples with r_ik below this are skipped when training component k
            (0 trains every component on every sample, as FedEM's official code).
        optimizer_state: "fresh" (default) or "per_client" (each client keeps its optimizer
            state per component between rounds, as the official codes of FedEM, FedSoft and
            FedGMM do); see :class:`~fedgmi.federated.worker.LocalTraining`.
        aggregation: Server rule under partial participation, "sampled" (default) or
            "all_clients" (see :class:`~fedgmi.federated.strategy.ParameterVectorStrategy`).

    Raises:
        ConfigError: a non-integer or too small value (one line).
    """

    #: Evidence of the E-step adds log p_k(y | x) when labels are given.
    label_evidence: bool = True
    #: Evaluation's flag for the same (it then also reports the label-informed assignment).
    evidence_uses_labels = property(lambda self: self.label_evidence)
    #: log p_k(x) of component_outputs is not a pixel density (zeros or a feature-space one).
    pixel_density: bool = False

    def __init__(self, classifier: ClassifierFactory | None = None, optimizer: OptimizerFactory | None = None,
                 local_epochs: int = 5, batch_size: int = 64, weight_floor: float = 1e-3,
                 aggregation: str = "sampled", optimizer_state: str = "fresh") -> None:
        self.training = LocalTraining(local_epochs, batch_size, optimizer, weight_floor, optimizer_state)
        self.aggregation = check_aggregation("algorithm.init_args.aggregation", aggregation)
        self.classifier_factory = classifier or MLPClassifier

    # ------------------------------------------------------------------ hooks for subclasses
    @property
    def num_models(self) -> int:
        """Number of components the server keeps (K of the problem by default)."""
        return self.spec.num_components

    def density_size(self) -> int:
        """Density parameters appended to each component's classifier vector (none here)."""
        return 0

    def initial_density(self, k: int) -> torch.Tensor:
        """(density_size,) initial density parameters of component k."""
        return torch.zeros(self.density_size())

    def log_density(self, x: torch.Tensor, state: Sequence[torch.Tensor]) -> torch.Tensor:
        """(N, K) log p_k(x) in nats; zeros here (a classifier has no density of x)."""
        return torch.zeros(len(x), len(state), device=x.device)

    def density_update(self, theta: torch.Tensor, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """(density_size,) the density part of component k's upload (none here)."""
        return theta.new_zeros(self.density_size())

    def sample_weights(self, task: ClientTask, x: torch.Tensor, y: torch.Tensor,
                       state: ClientState) -> tuple[torch.Tensor, ClientState]:
        """(n, K) per-sample training weights r_ik of this client, and its new state (e.g. its
        proportions)."""
        raise NotImplementedError

    def aggregation_weights(self, r: torch.Tensor, num_examples: int) -> torch.Tensor:
        """(K,) aggregation weights sent with the deltas: the responsibility mass sum_i r_ik."""
        return r.sum(0)

    # ------------------------------------------------------------------ server side
    def build_model(self) -> torch.nn.Module:
        """A fresh classifier head for this problem."""
        return self.classifier_factory(self.spec.image_shape, self.spec.num_classes)

    def setup(self, spec: ProblemSpec, fabric, seed: int) -> None:
        """Build the independently initialised components and the client worker."""
        super().setup(spec, fabric, seed)
        heads = initial_vectors(self.build_model, self.num_models, seed)
        self.head_size = heads[0].numel()
        self.worker = ClientWorker(fabric, self.build_model(), self.training)
        self.global_state = [torch.cat([h, self.initial_density(k)]).to(fabric.device) for k, h in enumerate(heads)]

    def aggregate(self, round_idx: int, replies: Sequence[ClientReply]) -> dict[str, float]:
        """Per-component weighted averaging of the deltas (FedGMI step 5 / FedAvg)."""
        if not replies:
            return {}
        return self.average_deltas(replies)

    # ------------------------------------------------------------------ client side
    @torch.no_grad()
    def component_outputs(self, x: torch.Tensor, estimator: str | None = None, num_samples: int | None = None,
                          generator: torch.Generator | None = None, state: Sequence[torch.Tensor] | None = None,
                          chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, K) :meth:`log_density` and (N, K, Y) log p_k(y | x) of the components of
        ``state`` (default: global) on (N, D) ``x``; ``estimator``, ``num_samples`` unused."""
        state = self.global_state if state is None else state
        x = x.to(self.fabric.device)
        class_lp = self.worker.outputs([theta[:self.head_size] for theta in state], x,
                                       lambda model, xb: F.log_softmax(model(xb).float(), -1), chunk)
        return self.log_density(x, state), class_lp

    def evidence(self, log_px: torch.Tensor, class_log_probs: torch.Tensor,
                 y: torch.Tensor | None = None) -> torch.Tensor:
        """(N, K) log p_k(x), plus log p_k(y | x) when labels are given and used."""
        if not self.label_evidence or y is None:
            return log_px
        return log_px + label_log_likelihood(class_log_probs, y)

    def client_update(self, task: ClientTask, data, state: ClientState) -> tuple[ClientReply, ClientState]:
        """Per-sample weights, then weighted training of every component with positive mass."""
        device = self.fabric.device
        gen = torch.Generator(device).manual_seed(task.seed)
        x, y = data.x_train.to(device), data.y_train.to(device)  # (n, D), (n,)
        r, new_state = self.sample_weights(task, x, y, state)  # (n, K)
        new_state = {**carried_optimizer_state(state), **new_state}
        mass = r.sum(0)  # (K,)
        updates, loss = [], 0.0
        for k, theta in enumerate(task.global_state):
            if mass[k] <= 0:
                updates.append(None)
                continue
            local = self.train_model(theta[:self.head_size], x, y, r[:, k], gen, state, f"optimizer.{k}",
                                     what=f"component {k}")
            updates.append(torch.cat([local.theta - theta[:self.head_size], self.density_update(theta, x, r[:, k])]))
            new_state.update(local.optimizer_state)
            loss += float(local.losses[0]) * float(mass[k])
        reply = task.reply(len(x), updates, self.aggregation_weights(r, len(x)),
                           {"cross_entropy": loss / max(float(mass.sum()), 1e-12)})
        return reply, new_state

    def train_model(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                    gen: torch.Generator, state: ClientState | None = None, key: str = "optimizer",
                    prox_center: torch.Tensor | None = None, prox_weight: float = 0.0,
                    what: str = "model") -> LocalUpdate:
        """Weighted cross-entropy training from the (P,) head ``theta`` on (n, D) ``x``, (n,)
        ``y`` with (n,) weights ``w`` (the shared worker's loop), plus
        ``prox_weight``/2 ||theta - prox_center||^2 (FedSoft's proximal term, Ruan and Joe-Wong
        2022, eq. 6). ``state``/``key``: where the client keeps a "per_client" optimizer state.

        Returns:
            The worker's :class:`~fedgmi.federated.worker.LocalUpdate`: the new (P,) head, the
            last epoch's mean weighted cross-entropy in nats, the optimizer state to keep.
        """
        def loss(model, xb, yb, wb, norm, _gen) -> tuple[torch.Tensor, torch.Tensor]:
            ce = weighted_cross_entropy(model(xb), yb, wb, norm)
            objective = ce
            if prox_weight > 0:
                objective = ce + 0.5 * prox_weight * (parameters_to_vector(model.parameters()) - prox_center).pow(2).sum()
            return objective, ce.detach()

        return self.worker.train(theta, x, y, w, gen, loss, what, state, key)
