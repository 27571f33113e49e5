"""The contract between the federated loop and an algorithm (after Flower's Strategy).

The loop (:mod:`fedgmi.federated.server`) owns rounds, client sampling, seeds, the channel,
screening, evaluation and outputs. An algorithm is a :class:`Strategy`: what clients receive,
what a client does with its own data, how replies become the new global state.

How to add an algorithm (two complete examples, FedProx and a clustered strategy with its own
global state, are in the guide ``docs/adding_an_algorithm.md``):

1. Subclass :class:`~fedgmi.algorithms.classifier_mixture.ClassifierMixture` (K classifiers
   trained with per-sample weights) or :class:`ParameterVectorStrategy` (any K flat vectors),
   or :class:`Strategy` itself for another global state.
2. ``setup(spec, fabric, seed)``: call ``super().setup`` first, then assign the global state
   (``self.global_state = (...)``, a tuple of flat tensors on ``fabric.device``).
3. ``client_update(task, data, state) -> (reply, new_state)``: train on ``data`` (the client's
   :class:`~fedgmi.data.ClientData`) from ``task.global_state``; return ``task.reply(...)`` and
   the client's new state (a small dict of tensors, e.g. ``{"pi": (K,)}``; the loop stores it,
   the strategy never writes it itself).
4. ``aggregate(round_idx, replies) -> metrics``: assign the new global state
   (``self.global_state = new``; never change the old tensors in place) and return the round's
   metrics.
5. ``component_outputs(x, ...)``: (N, K) log p_k(x) and (N, K, Y) log p_k(y | x), what
   evaluation scores and predicts with (required); optionally the other
   :class:`EvaluationHooks` (flags and hooks with defaults for a K-component mixture),
   ``configure_round`` (who gets what) and ``initialize`` (a stage before round 0).
6. Check it: :func:`fedgmi.check_strategy` runs the contract test on the class; ``fedgmi
   validate`` refuses a class that leaves a required hook out. A config in ``configs/`` makes
   our own tests run it through the real loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import lightning
import torch

from fedgmi.errors import ConfigError
from fedgmi.federated.aggregation import aggregate_components
from fedgmi.federated.messages import ClientReply, ClientTask, ContractError, derive_seed
from fedgmi.federated.responsibilities import estimate_proportions
from fedgmi.validation import check_choice

if TYPE_CHECKING:  # the data classes (imported for the annotations only)
    from fedgmi.data.scenario import ClientData, GroundTruth, Scenario
    from fedgmi.federated.clients import ClientPool, Payload

#: A client's own state between rounds: a few named tensors (e.g. {"pi": (K,) proportions}).
ClientState = dict[str, torch.Tensor]

#: Server rules under partial participation (see :class:`ParameterVectorStrategy`).
AGGREGATIONS = ("sampled", "all_clients")


@dataclass(frozen=True)
class ProblemSpec:
    """What an algorithm may know of the federation before training (no ground truth).

    Attributes:
        image_shape: (C, H, W) shape of one input.
        num_components: K, the number of mixture components to learn.
        num_classes: Number of class labels.
        num_clients: Number of clients C.
        train_examples: N, the training examples of all training clients together (what a
            server learns when clients register; the "all_clients" rule needs it).
    """

    image_shape: tuple[int, ...]
    num_components: int
    num_classes: int
    num_clients: int
    train_examples: int | None = None

    @classmethod
    def of(cls, scenario: Scenario, strategy: Strategy, train_examples: int | None = None) -> ProblemSpec:
        """The spec of ``scenario`` for ``strategy``: K is the strategy's
        :attr:`Strategy.num_components` when set (learned K may differ from the scenario's true
        K), else the scenario's."""
        k = strategy.num_components or scenario.num_components
        return cls(tuple(scenario.image_shape), int(k), scenario.num_classes, len(scenario.clients), train_examples)


@dataclass(frozen=True)
class Initialization:
    """What a strategy's initialisation stage (before round 0) did.

    Attributes:
        client_states: New state of the clients it touched, by client id.
        bytes_up: Uplink bytes of the stage, all clients.
        bytes_down: Downlink bytes of the stage, all clients.
        exchanges: Server-client exchanges of the stage (a full-participation exchange counts
            once), reported beside the rounds so that no communication is hidden.
    """

    client_states: dict[int, ClientState] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0
    exchanges: int = 0


class EvaluationHooks(ABC):
    """How a strategy's components are scored and predict (used by
    :mod:`fedgmi.federated.evaluation` only; :class:`Strategy` inherits them): the defaults
    suit a mixture of K components; :meth:`component_outputs` is required."""

    #: False for methods without a mixture (FedAvg, Local): their mixture metrics are NaN.
    models_mixture: bool = True
    #: False when log p_k(x) of component_outputs is not a pixel-space density (classifier-only
    #: methods, Gaussians in a feature space): test_nll is then NaN.
    pixel_density: bool = True
    #: Only the Oracle sets this; then the loop and evaluation call attach_ground_truth.
    uses_ground_truth: bool = False
    #: True when :meth:`evidence` adds label terms given ``y`` (FedGMI's "joint" E-step, classifier
    #: mixtures with ``label_evidence``): evaluation then also reports the label-informed assignment.
    evidence_uses_labels: bool = False
    #: tau of the personalised prediction's routing, post_ck(x) proportional to pi_ck p_k(x)^tau
    #: (:func:`~fedgmi.models.personalized.mixture_log_predict`; 1 = the mixture's posterior).
    density_weight: float = 1.0

    @abstractmethod
    def component_outputs(
        self, x: torch.Tensor, estimator: str | None = None, num_samples: int | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-component density and class predictions on (N, D) ``x``: (N, K) log p_k(x) in
        nats and (N, K, Y) log p_k(y | x)."""

    def evidence(self, log_px: torch.Tensor, class_log_probs: torch.Tensor,
                 y: torch.Tensor | None = None) -> torch.Tensor:
        """(N, K) per-sample E-step evidence from :meth:`component_outputs` (default: log p_k(x);
        an algorithm that uses labels adds log p_k(y | x) when ``y`` is given)."""
        return log_px

    def attach_ground_truth(self, truth: GroundTruth) -> None:
        """Receive the scenario's :class:`~fedgmi.data.GroundTruth` (the Oracle only).

        Raises:
            RuntimeError: the strategy does not declare ``uses_ground_truth``.
        """
        raise RuntimeError(f"{type(self).__name__} may not see the ground truth")

    def client_component_outputs(
        self, client_id: int, part: str, x: torch.Tensor, estimator: str | None = None,
        num_samples: int | None = None, generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`component_outputs` as evaluated for one client's ``part`` ("train" or "test");
        default: the same global components for every client."""
        return self.component_outputs(x, estimator, num_samples, generator)

    def estimate_client_proportions(self, evidence: torch.Tensor, start: torch.Tensor | None,
                                    iters: int) -> torch.Tensor:
        """(K,) a client's proportions from its (N, K) evidence at evaluation; default: EM on
        the proportions (:func:`~fedgmi.federated.responsibilities.estimate_proportions`)."""
        return estimate_proportions(evidence, start, iters)[0]

    def client_proportions(self, client_id: int) -> torch.Tensor | None:
        """(K,) the client's current mixture proportions, or ``None`` if it has none yet."""
        return getattr(self, "client_state", {}).get(int(client_id), {}).get("pi")


class Strategy(EvaluationHooks):
    """What an algorithm implements (see the module docstring): the training hooks here and the
    evaluation hooks of :class:`EvaluationHooks`. Required (abstract): :meth:`client_update`,
    :meth:`aggregate` and :meth:`~EvaluationHooks.component_outputs`; everything else has a
    default. ``fedgmi validate`` and :func:`~fedgmi.federated.contract.check_strategy` refuse a
    class that leaves a required hook out.

    The global state (:attr:`global_state`): ``setup`` assigns it, ``aggregate`` assigns the
    new one (``self.global_state = new``, a new tuple of tensors, never the old tensors changed
    in place: the loop, the channel and the checkpoints may hold references to them). A
    strategy that derives its global state from its own attributes (FedVTC) overrides the
    property and :meth:`load_state_dict` instead.
    """

    #: Every client's state, keyed by client id; written by the loop only (from the second
    #: value :meth:`client_update` returns and from :attr:`Initialization.client_states`).
    client_state: dict[int, ClientState]
    #: Number of components to learn; None (default) = the scenario's true K. An algorithm
    #: with components exposes it as its ``num_components`` setting.
    num_components: int | None = None

    @property
    def name(self) -> str:
        """The algorithm's name (its class name), used in messages and checkpoints."""
        return type(self).__name__

    def setup(self, spec: ProblemSpec, fabric: lightning.Fabric, seed: int) -> None:
        """Build the global state for ``spec`` on ``fabric.device``. Called once."""
        self.spec, self.fabric, self.seed = spec, fabric, seed
        self.client_state = {}

    def initialize(self, clients: ClientPool) -> Initialization:
        """Optional federated stage before round 0 over the training clients: a
        :class:`~fedgmi.federated.clients.ClientPool` (or, in process, a scenario or a sequence of
        :class:`~fedgmi.data.ClientData`: wrap it with
        :func:`~fedgmi.federated.clients.client_pool`). Every computation on a client's data is a
        client step (``clients.call(step, requests, shared)``, run by :meth:`client_step` on the
        client); the server only combines the replies. Default: no stage."""
        return Initialization()

    def client_step(self, step: str, request: Payload, data: ClientData) -> Payload:
        """The client side of the strategy's own client steps (its initialisation stage, see
        :meth:`initialize`): compute on the client's own ``data`` what the server may see.

        Args:
            step: The step's name (the strategy's own, e.g. ``"topic.histogram"``).
            request: The client's request and the shared settings (named tensors).
            data: The client's :class:`~fedgmi.data.ClientData`.

        Returns:
            The reply (named tensors: their raw bytes are the step's uplink).

        Raises:
            ContractError: the strategy has no step of that name.
        """
        raise ContractError(f"{self.name}: no client step {step!r}")

    _global_state: tuple[torch.Tensor, ...] = ()

    @property
    def global_state(self) -> tuple[torch.Tensor, ...]:
        """The flat parameter vectors the server holds, each (P_m,) (what every task carries)."""
        return self._global_state

    @global_state.setter
    def global_state(self, state: Sequence[torch.Tensor]) -> None:
        """Replace the global state (``setup``, ``aggregate``): a sequence of tensors, stored as
        a tuple.

        Raises:
            ContractError: ``state`` is not a sequence of tensors.
        """
        state = tuple(state) if isinstance(state, (list, tuple)) else state
        if not isinstance(state, tuple) or not all(isinstance(t, torch.Tensor) for t in state):
            raise ContractError(f"{self.name}: global_state must be a sequence of tensors, got "
                                f"{type(state).__name__}")
        self._global_state = state

    def configure_round(self, round_idx: int, client_ids: Sequence[int]) -> list[ClientTask]:
        """One task per sampled client: the global state, settings and a derived seed."""
        state, settings = self.global_state, self.round_settings(round_idx)
        return [ClientTask(round_idx, int(c), derive_seed(self.seed, round_idx, int(c)), state, settings,
                           algorithm=self.name) for c in client_ids]

    def round_settings(self, round_idx: int) -> dict[str, float | int | str]:
        """Scalar settings sent with every task of the round (none by default)."""
        return {}

    @abstractmethod
    def client_update(self, task: ClientTask, data: ClientData, state: ClientState) -> tuple[ClientReply, ClientState]:
        """One client's local update on its own ``data`` from its ``state`` (``{}`` at first):
        its reply and its new state."""

    @abstractmethod
    def aggregate(self, round_idx: int, replies: Sequence[ClientReply]) -> dict[str, float]:
        """Turn the round's accepted replies (at least one) into the new global state, assigned
        to :attr:`global_state` (a new tuple; the old tensors unchanged); return the round's
        metrics (name -> float, e.g. ``train_cross_entropy``)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: global state and client state."""
        return {
            "global_state": [t.detach().cpu() for t in self.global_state],
            "client_state": {c: {k: v.cpu() for k, v in s.items()} for c, s in self.client_state.items()},
        }

    def node_state(self, client_ids: Sequence[int]) -> dict[str, Any]:
        """What a client update needs besides its task (global vectors, settings) and its own
        state, for a node that holds ``client_ids``: what a deployment sends that node (see
        :mod:`fedgmi.flower.wire`). It must hold no other client's data or state (the base
        class: nothing; a strategy whose clients read a shared initialisation returns it)."""
        return {}

    def load_node_state(self, state: dict[str, Any]) -> None:
        """Install what :meth:`node_state` returned, on a node's copy of the strategy."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the global state too, unless the class
        derives :attr:`global_state` itself: then its own ``load_state_dict`` restores it)."""
        device = self.fabric.device
        self.client_state = {int(c): {k: v.to(device) for k, v in s.items()} for c, s in state["client_state"].items()}
        if type(self).global_state is Strategy.global_state:
            self.global_state = [t.to(device) for t in state["global_state"]]


class ParameterVectorStrategy(Strategy):
    """A Strategy whose global state is K flat parameter vectors (each (P,)),
    updated by per-component weighted averaging of the clients' deltas (FedGMI step 5; FedAvg,
    McMahan et al. 2017, with one component and weights n_c). Subclasses set
    ``self.global_state`` in :meth:`setup` and ``self.aggregation`` in ``__init__``.

    Server rule under partial participation (``aggregation``; the papers' pseudo-code leaves it
    implicit, the codes differ):

    - ``"sampled"``: theta_k += sum_{c in S} w_ck delta_ck / sum_{c in S} w_ck, the weights
      normalised over the sampled clients S (a full step; FedAvg's server, McMahan et al.
      2017, Algorithm 1, with n_k / m_t);
    - ``"all_clients"``: every training client counts with n_c / N, an unsampled one with its
      unchanged copy, so the step above is scaled by sum_{c in S} n_c / N (FedEM's official
      aggregator, omarfoq/FedEM; exact there, where w_ck = n_c; here: the same scaling for
      other aggregation weights).
    """

    aggregation: str = "sampled"

    def step_size(self, replies: Sequence[ClientReply]) -> float:
        """1 under the "sampled" rule; the replies' share of all training examples under
        "all_clients".

        Raises:
            ConfigError: "all_clients" without ``spec.train_examples``.
        """
        if self.aggregation == "sampled":
            return 1.0
        if not self.spec.train_examples:
            raise ConfigError(f"{self.name}: aggregation = 'all_clients' needs the number of training "
                              "examples of all clients (ProblemSpec.train_examples)")
        return sum(r.num_examples for r in replies) / self.spec.train_examples

    def average_deltas(self, replies: Sequence[ClientReply]) -> dict[str, float]:
        """theta_k += step * sum_c w_ck delta_ck / sum_c w_ck over the replies that sent k;
        returns the example-weighted ``train_cross_entropy`` and ``components_sent_per_client``."""
        self.global_state = aggregate_components(
            list(self.global_state), [r.updates for r in replies], [r.aggregation_weights.tolist() for r in replies],
            step=self.step_size(replies))
        return self.round_metrics(replies)

    @staticmethod
    def round_metrics(replies: Sequence[ClientReply]) -> dict[str, float]:
        """Example-weighted training cross-entropy and updates uploaded per client."""
        total = sum(r.num_examples for r in replies)
        return {
            "train_cross_entropy": sum(r.metrics["cross_entropy"] * r.num_examples for r in replies) / total,
            "components_sent_per_client": sum(u is not None for r in replies for u in r.updates) / len(replies),
        }


def check_aggregation(name: str, value: str) -> str:
    """``value`` if it is one of :data:`AGGREGATIONS`, else ConfigError naming ``name``."""
    check_choice(name, value, AGGREGATIONS)
    return value
