"""FedGMI: federated generative mixture inference (Hou, Shi, Fan, Letaief, arXiv 2605.08760).

K components, each a VAE density estimator of x plus a class predictor p_k(y | x): a head on a
classifier body shared by all components (``classifier_sharing="shared_body"``, the default:
the body is trained by every client on all its samples and averaged with weights n_c as one
more update, index K) or a whole classifier per component ("separate", the paper's layout).
One round (DESIGN.md, steps 1-5):

1. the server sends the component parameter vectors (and the body) to the sampled clients;
2. client E-step: log r_ik = log pi_ck + log p_k(x_i) - logsumexp_k(...), with log p_k(x) the
   ELBO (or IWAE bound) of component k ("label_free"), plus log p_k(y_i | x_i) ("joint");
3. client M-step: pi_c = mean_i r_ik (iterated ``proportion_iters`` times with the likelihoods
   fixed), then each component k trains on the client's data weighted by r_ik (weighted
   negative ELBO, plus its head's weighted cross-entropy in the "separate" layout) for
   ``local_epochs`` epochs; with a shared body, the body and the K heads then train together
   on the r_ik-weighted cross-entropy for ``classifier_epochs`` epochs;
4. the client uploads per-component deltas and weights w_ck = sum_i r_ik (and the body's delta
   with weight n_c);
5. the server averages each update with its weights.

Symmetry breaking (documented choice, measured in the README): with ``init="topic"`` (default)
the first ``warmup_rounds`` rounds take their responsibilities from a federated topic model
over fine k-means clusters (:mod:`fedgmi.algorithms.topic_init`) instead of from the VAEs, so
each component starts on data that is mostly one inherent distribution. ``init="random"``
starts every component from its own random weights with uniform proportions (plain EM).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from functools import partial

import torch

from fedgmi.algorithms.topic_init import CLIENT_STEPS as TOPIC_STEPS
from fedgmi.algorithms.topic_init import TopicInit, fit_topic_init
from fedgmi.errors import ConfigError
from fedgmi.federated.clients import client_pool
from fedgmi.federated.messages import ClientReply, ClientTask, derive_seed
from fedgmi.federated.responsibilities import check_rule, estimate_proportions, label_log_likelihood
from fedgmi.federated.strategy import (
    ClientState,
    Initialization,
    ParameterVectorStrategy,
    ProblemSpec,
    check_aggregation,
)
from fedgmi.federated.worker import (
    ClientWorker,
    LocalTraining,
    OptimizerFactory,
    carried_optimizer_state,
    copy_into_parameters,
    initial_vectors,
)
from fedgmi.models import ESTIMATORS, ComponentVAE
from fedgmi.models.component import MixtureComponent
from fedgmi.models.component_classifiers import (
    ComponentClassifiers,
    mixture_of_experts_nll,
    responsibility_weighted_cross_entropy,
)
from fedgmi.models.features import fitting_features
from fedgmi.models.heads import MLPClassifier
from fedgmi.models.personalized import PersonalizedMixture, density_weight_scores
from fedgmi.models.vae import mlp
from fedgmi.validation import check_choice, check_int, check_number, is_real

INITS = ("topic", "random")
ESTEPS = ("label_free", "joint")
SHARINGS = ("shared_body", "separate")
HEAD_LOSSES = ("weighted", "mixture")
SCORES = "density_weight_scores"
"""The reply statistic with a client's (G,) calibration scores (see ``FedGMI.density_weights``)."""
CALIBRATION_STREAM = 7
"""Mixed into the seed of a client's calibration split (stays the same in every round)."""


def check_density_weights(values: Sequence[float] | None) -> tuple[float, ...] | None:
    """The candidate taus as a tuple, or ``None``.

    Raises:
        ConfigError: not a non-empty list of distinct finite numbers >= 0 (one line).
    """
    if values is None:
        return None
    bad = isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values
    bad = bad or not all(is_real(v) and math.isfinite(v) and v >= 0 for v in values)
    if bad or len(set(values)) != len(values):
        raise ConfigError(f"algorithm.init_args.density_weights = {values!r} must be a non-empty list of distinct "
                          "finite numbers >= 0 (candidate taus), or null")
    return tuple(float(v) for v in values)


ComponentFactory = Callable[[tuple[int, ...]], ComponentVAE]
ClassifierFactory = Callable[[tuple[int, ...], int], torch.nn.Module]
BodyFactory = Callable[[tuple[int, ...]], torch.nn.Module]


def default_body(image_shape: Sequence[int]) -> torch.nn.Module:
    """FedGMI's default classifier body: :class:`~fedgmi.models.features.CNNFeatures` (64
    features, channels (8, 16): the conv body of ``configs/pm_mnist_paper.yaml``'s CNN) for
    images of at least 12 x 12, else :class:`~fedgmi.models.features.MLPFeatures` (200-64)."""
    return fitting_features(image_shape, feature_dim=64)


class FedGMI(ParameterVectorStrategy):
    """FedGMI with VAE components and classifier heads.

    Args:
        component: Builds one component's VAE from the image shape; default
            ``ComponentVAE(hidden_dims=(200,), latent_dim=10)``. In config:
            ``class_path``/``init_args`` without ``image_shape``. On the MNIST scenario a
            400-20 VAE scores about the same at 1.25x the time (measured in the README).
        classifier_sharing: How the K class predictors p_k(y | x) are built
            (:mod:`fedgmi.models.component_classifiers`). "shared_body" (default): a body
            z = body(x), trained by every client on all its samples and averaged with weights
            n_c (FedAvg), and K small heads on z, trained with the responsibilities and
            averaged per component with weights w_ck; the body travels as one more update
            (index K, aggregation weight n_c). "separate" (the paper's layout): head k is a
            whole classifier of x (``classifier``) inside component k's vector.
        body: "shared_body" only: builds the body from the image shape, a module with a
            ``feature_dim``; default :func:`default_body`.
        head_hidden: "shared_body" only: hidden width of each head (0 = a linear head).
        classifier_epochs: "shared_body" only: local epochs of the body and heads per round
            (``None`` = ``local_epochs``); one pass trains all K heads, so it costs about 1/K
            of a VAE's epochs.
        head_epochs: "shared_body" only: after those epochs, the heads alone train this many
            more epochs on the body's features, computed once per round (no gradient through the
            body, so an epoch costs a small fraction of a body epoch; 0 = none). Paper: silent
            (whole classifiers); here: measured in the README.
        head_loss: "shared_body" only: how the body and heads fit the labels. "weighted":
            each head's cross-entropy weighted by r_ik
            (:func:`~fedgmi.models.component_classifiers.responsibility_weighted_cross_entropy`);
            "mixture": the negative log-likelihood of the personalised prediction
            sum_k r_ik p_k(y | x) (:func:`~fedgmi.models.component_classifiers.mixture_of_experts_nll`).
        classifier: "separate" only: builds one component's head from (image_shape,
            num_classes); default ``MLPClassifier`` 784-200-10. In config:
            ``class_path``/``init_args`` without those two.
        optimizer: Builds the local optimizer from parameters; default
            Adam(lr=1e-3, fused=True) (fused: measured 7.3 vs 11.9 ms a step on this VAE on
            CPU). A fresh optimizer state is used for every client and component.
            ``local_epochs``, ``batch_size``, ``optimizer`` and ``weight_floor`` make the
            :class:`~fedgmi.federated.worker.LocalTraining` of the shared client worker.
        estep: "label_free" (log p_k(x) only; usable on unlabelled data) or "joint" (adds
            log p_k(y | x) of the component's head).
        label_weight: Weight lambda of log p_k(y | x) in the "joint" evidence
            log p_k(x) + lambda log p_k(y | x) (1 = the joint likelihood p_k(x, y)).
        calibrated_evidence: "joint" only: the evidence becomes tau log p_k(x) + lambda
            log p_k(y | x), tau the routing weight the calibration chose (``density_weights``;
            1 in the first VAE round), so where p(x) tells the components nothing (a label
            permutation: tau = 0) the density estimates' differences stop steering the
            responsibilities and the proportions. Paper: silent (tau = 1); here: measured in
            docs/benchmarks/fair.md. Without ``density_weights`` tau is 1.
        head_min_responsibility: Component k's classifier head trains only on samples with
            r_ik at least this (0 = every sample, weighted by r_ik); the VAE always trains on
            all. Samples the evidence cannot place (an upright 0 or 8 looks like one turned
            180 degrees, and has the same label) get prior-driven, middling
            responsibilities; keeping them out keeps each head specialised.
        local_epochs: Passes over the client's data per component per round.
        batch_size: Local mini-batch size.
        estimator: Log-likelihood estimate for the E-step: "elbo" or "iwae".
        num_samples: Latent samples of that estimate.
        responsibility: "soft" (posterior) or "hard" (one-hot arg-max, classification EM);
            like ``temperature``, it applies to the VAE rounds (warm-up uses the topic
            model's exact posterior).
        temperature: Temperature T of the likelihood in the E-step, r ~ pi * p(x)^(1/T)
            (1 = exact posterior; see fedgmi.federated.responsibilities.responsibilities).
        proportion_iters: EM iterations on pi with likelihoods fixed, per E-step.
        min_mass: A client trains and uploads component k only when w_ck = sum_i r_ik is at
            least this (in samples); smaller contributions are dropped.
        train_top_m: A client trains (and returns) only its m components of largest w_ck
            per round (``None`` = every component above ``min_mass``). Paper: silent (every
            component trains); here: with partial upload (``channel.upload_top_m``) the
            components a client would not send need not be trained, which saves their
            local epochs (measured in the README).
        weight_floor: Samples with r_ik below this are skipped when training component k.
        init: Symmetry breaking, "topic" (default) or "random" (see module docstring).
        warmup_rounds: Rounds whose responsibilities come from the topic model ("topic").
        topic_clusters: Fine k-means clusters M of the topic initialisation.
        topic_restarts: Random restarts of the topic model (the server's own computation on
            the clients' histograms: no bytes, see :mod:`fedgmi.algorithms.topic_init`).
        topic_iters: EM iterations of each restart (server side, no bytes).
        topic_lloyd_rounds: Federated Lloyd rounds refining the fine clusters after k-FED's
            one-shot merge (each one full-participation exchange of M x (D + 1) numbers per
            client each way; see ``init_exchanges``).
        topic_min_group: No upload of the fine-cluster stage describes fewer than this many of
            a client's samples: a local k-means cluster or a Lloyd cell with fewer stays on the
            client (a centroid of one image is that image). Default 10, measured on
            configs/pm_mnist.yaml's scenario: no loss (see docs/guide/flower.md, "What each
            message carries"); 1 uploads every group.
        aggregation: Server rule under partial participation, "sampled" (default: the
            DESIGN's step 5, weights w_ck normalised over the sampled clients) or
            "all_clients" (see :class:`~fedgmi.federated.strategy.ParameterVectorStrategy`).
        optimizer_state: "fresh" (default) or "per_client" (each client keeps its optimizer
            state per component between rounds; see :class:`~fedgmi.federated.worker.LocalTraining`).
        density_weights: Candidate values of tau for the personalised prediction's routing,
            post_ck(x) proportional to pi_ck p_k(x)^tau
            (:func:`~fedgmi.models.personalized.mixture_log_predict`). Paper: tau = 1. Here: in
            every VAE round each sampled client scores every candidate on its calibration
            split (the labels' log-likelihood of its personalised prediction, nats; G
            numbers up) and the server keeps the candidate of the highest total, so where
            the p_k(x) cannot tell the components apart (a pure label permutation) the
            prediction falls back on the proportions (tau = 0) instead of following the
            density estimates' errors. ``None``: tau = 1 always, no calibration split (also
            for a checkpoint that calibrated one: ``fedgmi test ... --algorithm.init_args.
            density_weights null`` scores a run with the paper's routing).
        calibration_fraction: Share of each client's training part (drawn once from the run
            seed and the client id) that its VAEs never train on, so the density terms of the
            calibration are not those of memorised samples; the classifiers train on all of
            it. Used only with ``density_weights``.
        num_components: K, the number of components to learn; None (default) = the
            scenario's true K. It may differ from the truth: the mixture scores then map learned
            to true components many-to-one (see :mod:`fedgmi.metrics.mixture_scores`).

    Raises:
        ConfigError: an out-of-range value or unknown option name (one line).
    """

    def __init__(
        self,
        component: ComponentFactory | None = None,
        classifier: ClassifierFactory | None = None,
        optimizer: OptimizerFactory | None = None,
        estep: str = "label_free",
        label_weight: float = 1.0,
        head_min_responsibility: float = 0.0,
        local_epochs: int = 5,
        batch_size: int = 64,
        estimator: str = "elbo",
        num_samples: int = 1,
        responsibility: str = "soft",
        temperature: float = 1.0,
        proportion_iters: int = 10,
        min_mass: float = 1.0,
        weight_floor: float = 1e-3,
        init: str = "topic",
        warmup_rounds: int = 10,
        topic_clusters: int = 60,
        topic_restarts: int = 20,
        aggregation: str = "sampled",
        optimizer_state: str = "fresh",
        num_components: int | None = None,
        classifier_sharing: str = "shared_body",
        body: BodyFactory | None = None,
        head_hidden: int = 0,
        head_loss: str = "weighted",
        calibrated_evidence: bool = False,
        classifier_epochs: int | None = None,
        topic_iters: int = 200,
        train_top_m: int | None = None,
        head_epochs: int = 0,
        topic_lloyd_rounds: int = 5,
        topic_min_group: int = 10,
        density_weights: Sequence[float] | None = None,
        calibration_fraction: float = 0.1,
    ) -> None:
        check_rule(responsibility, temperature)
        check_choice("algorithm.init_args.classifier_sharing", classifier_sharing, SHARINGS)
        check_choice("algorithm.init_args.head_loss", head_loss, HEAD_LOSSES)
        unused = ("classifier", classifier) if classifier_sharing == "shared_body" else ("body", body)
        if unused[1] is not None:
            raise ConfigError(f"algorithm.init_args.{unused[0]} is set but classifier_sharing = "
                              f"{classifier_sharing!r} does not use it (classifier: separate; body: shared_body)")
        for name, value in [("num_components", num_components), ("train_top_m", train_top_m)]:
            if value is not None:
                check_int(f"algorithm.init_args.{name}", value, 1)
        self.train_top_m = train_top_m
        self.num_components = num_components
        for name, value, allowed in [("init", init, INITS), ("estep", estep, ESTEPS),
                                     ("estimator", estimator, ESTIMATORS)]:
            check_choice(f"algorithm.init_args.{name}", value, allowed)
        if calibrated_evidence not in (True, False) or (calibrated_evidence and estep != "joint"):
            raise ConfigError(f"algorithm.init_args.calibrated_evidence = {calibrated_evidence!r} must be false, or "
                              f"true with estep = 'joint' (got estep = {estep!r})")
        for name, value, low in [
            ("num_samples", num_samples, 1), ("proportion_iters", proportion_iters, 1),
            ("warmup_rounds", warmup_rounds, 0), ("topic_clusters", topic_clusters, 2),
            ("topic_restarts", topic_restarts, 1), ("topic_iters", topic_iters, 1), ("head_hidden", head_hidden, 0),
            ("topic_lloyd_rounds", topic_lloyd_rounds, 0), ("topic_min_group", topic_min_group, 1),
            ("head_epochs", head_epochs, 0),
            *([("classifier_epochs", classifier_epochs, 1)] if classifier_epochs is not None else []),
        ]:
            check_int(f"algorithm.init_args.{name}", value, low)
        check_number("algorithm.init_args.label_weight", label_weight, 0)
        check_number("algorithm.init_args.head_min_responsibility", head_min_responsibility, 0, 1, high_open=True)
        check_number("algorithm.init_args.min_mass", min_mass, 0)
        check_number("algorithm.init_args.calibration_fraction", calibration_fraction, 0, 1, high_open=True)
        self.density_weights = check_density_weights(density_weights)
        self.calibration_fraction = calibration_fraction
        self.density_weight = 1.0  # the server's current tau (global state, see density_weights)
        self.training = LocalTraining(local_epochs, batch_size, optimizer, weight_floor, optimizer_state)
        self.aggregation = check_aggregation("algorithm.init_args.aggregation", aggregation)
        self.component_factory = component or partial(ComponentVAE, hidden_dims=(200,), latent_dim=10)
        self.classifier_factory = classifier or MLPClassifier
        self.classifier_sharing, self.head_hidden, self.head_loss = classifier_sharing, head_hidden, head_loss
        self.calibrated_evidence = bool(calibrated_evidence)
        self.classifier_training = dataclasses.replace(
            self.training, local_epochs=local_epochs if classifier_epochs is None else classifier_epochs)
        self.body_factory = body or default_body
        self.head_training = dataclasses.replace(self.training, local_epochs=max(head_epochs, 1))
        self.head_epochs = head_epochs
        self.head_min_responsibility = head_min_responsibility
        self.estep, self.label_weight = estep, label_weight
        self.estimator, self.num_samples = estimator, num_samples
        self.responsibility, self.temperature = responsibility, temperature
        self.proportion_iters, self.min_mass = proportion_iters, min_mass
        self.init, self.warmup_rounds = init, warmup_rounds if init == "topic" else 0
        self.topic_clusters, self.topic_restarts, self.topic_iters = topic_clusters, topic_restarts, topic_iters
        self.topic_lloyd_rounds, self.topic_min_group = topic_lloyd_rounds, topic_min_group
        self.topic: TopicInit | None = None

    # ------------------------------------------------------------------ server side
    @property
    def shared_body(self) -> bool:
        """True in the "shared_body" layout (the body is update K; heads ride with the VAEs)."""
        return self.classifier_sharing == "shared_body"

    @property
    def evidence_uses_labels(self) -> bool:
        """True in the "joint" mode, whose evidence adds log p_k(y | x) (evaluation then also
        reports the label-informed assignment)."""
        return self.estep == "joint"

    def build_component(self) -> MixtureComponent:
        """A fresh component module for this problem: the VAE and, in the "separate" layout,
        its whole classifier; in "shared_body" the VAE only (the heads live in
        :meth:`build_classifiers`)."""
        spec = self.spec
        vae = self.component_factory(spec.image_shape)  # first: the seeded draws of the paper layout are unchanged
        head = None if self.shared_body else self.classifier_factory(spec.image_shape, spec.num_classes)
        return MixtureComponent(vae, head)

    def build_classifiers(self) -> ComponentClassifiers:
        """The K class predictors as one module, (B, D) -> (B, K, Y) logits: the body and K
        heads ("shared_body") or K whole classifiers ("separate")."""
        spec, k = self.spec, self.spec.num_components
        if not self.shared_body:
            return ComponentClassifiers([self.classifier_factory(spec.image_shape, spec.num_classes) for _ in range(k)])
        body = self.body_factory(spec.image_shape)
        return ComponentClassifiers(self._build_heads(body.feature_dim), body)

    def _build_heads(self, feature_dim: int) -> list[torch.nn.Module]:
        """K fresh heads, (B, feature_dim) features -> (B, Y) logits."""
        widths = [feature_dim, *([self.head_hidden] if self.head_hidden else []), self.spec.num_classes]
        return [mlp(widths) for _ in range(self.spec.num_components)]

    def setup(self, spec: ProblemSpec, fabric, seed: int) -> None:
        """Build K independently initialised components (and, "shared_body", the classifiers'
        body and heads, seeded ``seed * 1000 + K``) and the client workers."""
        super().setup(spec, fabric, seed)
        k = spec.num_components
        states = initial_vectors(self.build_component, k, seed)
        self.worker = ClientWorker(fabric, self.build_component(), self.training)
        self._vae_size = states[0].numel()
        if self.shared_body:
            torch.manual_seed(seed * 1000 + k)
            self.classifier_worker = ClientWorker(fabric, self.build_classifiers(), self.classifier_training)
            if self.head_epochs:  # built only when used: the random draws of the runs without stay as they were
                feature_dim = self.classifier_worker.module.body.feature_dim
                self.head_worker = ClientWorker(fabric, ComponentClassifiers(self._build_heads(feature_dim)),
                                                self.head_training)
            body, heads = self._split_classifiers(self.classifier_worker.vector())
            states = [torch.cat([s.to(h.device), h]) for s, h in zip(states, heads)] + [body]
        self.global_state = [s.to(fabric.device) for s in states]

    def _split_classifiers(self, flat: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(P_body + K P_head,) classifier vector -> the body's (P_body,) and K (P_head,) parts."""
        body_size, head_sizes = self.classifier_worker.module.split_sizes()
        parts = flat.split([body_size, *head_sizes])
        return parts[0], list(parts[1:])

    def _unpack(self, state: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """The K component vectors' VAE parts and the classifier vector (``None`` in the
        "separate" layout, where each component vector is the whole component)."""
        if not self.shared_body:
            return list(state), None
        k, p = self.spec.num_components, self._vae_size
        return [s[:p] for s in state[:k]], torch.cat([state[k], *[s[p:] for s in state[:k]]])

    def state_dict(self) -> dict:
        """The base state plus the topic-model initialisation (its warm-up rounds need it)."""
        topic = None if self.topic is None else dataclasses.asdict(self.topic)
        return {**super().state_dict(), "topic": topic, "density_weight": self.density_weight}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.topic = None if state.get("topic") is None else TopicInit(**state["topic"])
        calibrated = self.density_weights is not None  # null: the paper's tau = 1, whatever was saved
        self.density_weight = float(state.get("density_weight", 1.0)) if calibrated else 1.0

    def node_state(self, client_ids: Sequence[int]) -> dict:
        """The topic model's global part (fine-cluster centroids (M, D), log beta (K, V), Y or
        ``None``), which the warm-up rounds read on the client, and tau; no client's proportions
        (each client's pi travels in its own state) and no totals over clients."""
        topic = None if self.topic is None else {"centroids": self.topic.centroids.cpu(),
                                                 "log_beta": self.topic.log_beta.cpu(),
                                                 "num_classes": self.topic.num_classes}
        return {"topic": topic, "density_weight": self.density_weight}

    def load_node_state(self, state: dict) -> None:
        """Install :meth:`node_state` (the topic model with an empty (0, K) proportions table)."""
        topic = state.get("topic")
        self.topic = None if topic is None else TopicInit(
            topic["centroids"], topic["log_beta"], torch.empty(0, topic["log_beta"].shape[0]),
            topic["num_classes"], float("nan"), 0, 0)
        self.density_weight = float(state.get("density_weight", 1.0))

    def initialize(self, clients) -> Initialization:
        """Topic-model initialisation over the training clients (``init="topic"``), every
        computation on a client's data a client step (see topic_init); in the "joint" mode its
        tokens include the labels. Each client's state is its topic-model proportions (sent to
        it with its first task)."""
        if self.init != "topic":
            return Initialization()
        pool = client_pool(clients, self)
        joint = self.estep == "joint"  # then tokens are (fine cluster, label) pairs
        self.topic = fit_topic_init(
            pool, self.spec.num_components, num_clusters=self.topic_clusters, restarts=self.topic_restarts,
            iters=self.topic_iters, seed=self.seed, lloyd_rounds=self.topic_lloyd_rounds,
            min_group=self.topic_min_group,
            num_classes=self.spec.num_classes if joint else None,
        )
        states = {c: {"pi": pi.to(self.fabric.device)} for c, pi in zip(pool.client_ids, self.topic.proportions)}
        return Initialization(states, self.topic.bytes_up, self.topic.bytes_down, self.topic.exchanges)

    def client_step(self, step, request, data):
        """The topic model's client steps (:data:`fedgmi.algorithms.topic_init.CLIENT_STEPS`)."""
        if step in TOPIC_STEPS:
            return TOPIC_STEPS[step](request, data)
        return super().client_step(step, request, data)

    def round_settings(self, round_idx: int) -> dict[str, float | int | str]:
        return {"phase": "warmup" if round_idx < self.warmup_rounds else "vae", "density_weight": self.density_weight}

    def aggregate(self, round_idx: int, replies: Sequence[ClientReply]) -> dict[str, float]:
        if not replies:
            return {}
        total = sum(r.num_examples for r in replies)
        scores = [r.statistics[SCORES] for r in replies if SCORES in r.statistics]
        if scores:  # the candidate tau whose personalised predictions fit the held-out labels best
            self.density_weight = float(self.density_weights[int(torch.stack(scores).sum(0).argmax())])
        return {"train_neg_elbo": sum(r.metrics["neg_elbo"] * r.num_examples for r in replies) / total,
                "density_weight": self.density_weight, **self.average_deltas(replies)}

    def personalized_model(self, proportions: torch.Tensor, estimator: str = "iwae",
                           num_samples: int = 8) -> PersonalizedMixture:
        """A standalone :class:`PersonalizedMixture` of copies of the global VAEs and class
        predictors with the given (K,) proportions (e.g. ``client_proportions(c)``)."""
        vaes, classifier_theta = self._unpack(self.global_state)
        components = []
        for theta in vaes:
            component = self.build_component().to(theta.device)
            copy_into_parameters(theta, component.parameters())
            components.append(component)
        if classifier_theta is None:
            classifiers = ComponentClassifiers([c.head for c in components])
        else:
            classifiers = self.build_classifiers().to(classifier_theta.device)
            copy_into_parameters(classifier_theta, classifiers.parameters())
        return PersonalizedMixture([c.vae for c in components], classifiers, proportions, estimator, num_samples,
                                   self.density_weight).eval()

    # ------------------------------------------------------------------ client side
    def load_vae(self, k: int, state: Sequence[torch.Tensor] | None = None) -> ComponentVAE:
        """The client worker's VAE loaded with component ``k``'s parameters from ``state``
        (default: the global state)."""
        return self.worker.load(self._unpack(self.global_state if state is None else state)[0][k]).vae

    @torch.no_grad()
    def component_outputs(
        self, x: torch.Tensor, estimator: str | None = None, num_samples: int | None = None,
        generator: torch.Generator | None = None, state: Sequence[torch.Tensor] | None = None,
        chunk: int = 2048, classes: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every component's density and class predictions on (N, D) ``x``.

        Returns:
            ``(log_px, class_log_probs)``: (N, K) log p_k(x) in nats (ELBO or IWAE bound) and
            (N, K, Y) log p_k(y | x), under the components of ``state`` (default: global);
            with ``classes=False`` the heads are not run and the second is (N, K, 0).
        """
        estimator, num_samples = estimator or self.estimator, num_samples or self.num_samples

        def forward(component: MixtureComponent, xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            log_px = component.vae.log_likelihood(xb, estimator, num_samples, generator).float()  # (n,)
            return log_px, component.class_log_prob(xb) if classes and component.head is not None \
                else xb.new_zeros(len(xb), 0)

        state = self.global_state if state is None else state
        vaes, classifier_theta = self._unpack(state)
        x = x.to(self.fabric.device)
        if classifier_theta is None:  # "separate": both from each component's module
            return self.worker.outputs(state, x, forward, chunk)
        log_px = self.worker.outputs(vaes, x, lambda c, xb: forward(c, xb)[0], chunk)  # (N, K)
        if not classes:
            return log_px, x.new_zeros(len(x), len(vaes), 0)
        class_lp = self.classifier_worker.outputs([classifier_theta], x, lambda m, xb: m.class_log_probs(xb), chunk)
        return log_px, class_lp[:, 0]  # (N, K), (N, K, Y)

    def evidence(self, log_px: torch.Tensor, class_log_probs: torch.Tensor,
                 y: torch.Tensor | None = None) -> torch.Tensor:
        """(N, K) per-sample evidence of the E-step: log p_k(x), plus log p_k(y | x) in the
        "joint" mode when labels ``y`` (N,) are given."""
        if self.estep != "joint" or y is None:
            return log_px
        density = self.density_weight if self.calibrated_evidence and self.density_weights is not None else 1.0
        return density * log_px + self.label_weight * label_log_likelihood(class_log_probs, y)

    def client_update(self, task: ClientTask, data, state: ClientState) -> tuple[ClientReply, ClientState]:
        """E-step, proportion update and weighted local training of each component; the new
        state is the client's proportions."""
        device = self.fabric.device
        gen = torch.Generator(device).manual_seed(task.seed)
        x, y = data.x_train.to(device), data.y_train.to(device)  # (n, D), (n,)
        if task.settings.get("phase") == "warmup":  # exact posterior of the topic model
            log_lik, rule, temperature = self.topic.log_likelihood_of(x, y), "soft", 1.0  # (n, K)
        else:
            log_px, class_lp = self.component_outputs(x, state=task.global_state, generator=gen,
                                                      classes=self.estep == "joint")
            log_lik = self.evidence(log_px, class_lp, y)
            rule, temperature = self.responsibility, self.temperature
        pi, r = estimate_proportions(log_lik, state.get("pi"), self.proportion_iters, rule, temperature)
        weights = r.sum(0)  # (K,) aggregation weights w_ck = sum_i r_ik
        new_state = {**carried_optimizer_state(state), "pi": pi}
        vaes, classifier_theta = self._unpack(task.global_state)
        held_out = self.calibration_mask(task.client_id, len(x))  # (n,) bool: the VAEs never train on these
        statistics = {}
        if self.density_weights is not None and task.settings.get("phase") != "warmup" and bool(held_out.any()):
            statistics[SCORES] = self._calibration_scores(task.global_state, pi, log_px[held_out], x[held_out],
                                                          y[held_out], class_lp[held_out])
        updates, losses, trained = [], torch.zeros(2, dtype=torch.float64), self.trained_components(weights)
        for k, theta in enumerate(vaes):
            if not trained[k]:
                updates.append(None)
                continue
            local = self.worker.train(theta, x, y, r[:, k] * ~held_out, gen, self._loss, f"component {k}", state,
                                      f"optimizer.{k}")
            updates.append(local.theta - theta)
            new_state.update(local.optimizer_state)
            losses += local.losses * float(weights[k])
        losses /= max(float(weights[trained].sum()), 1e-12)
        if classifier_theta is not None:
            updates, weights, losses[1] = self._train_classifiers(classifier_theta, x, y, r, gen, state, new_state,
                                                                  updates, weights)
        reply = task.reply(len(x), updates, weights,
                           {"neg_elbo": float(losses[0]), "cross_entropy": float(losses[1])}, statistics)
        return reply, new_state

    def calibration_mask(self, client_id: int, n: int) -> torch.Tensor:
        """(n,) bool: the client's calibration split, ``calibration_fraction`` of its n training
        samples drawn from (run seed, client id) (none without ``density_weights``)."""
        mask = torch.zeros(n, dtype=torch.bool, device=self.fabric.device)
        count = round(self.calibration_fraction * n) if self.density_weights is not None else 0
        if count:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, int(client_id), CALIBRATION_STREAM))
            mask[torch.randperm(n, generator=gen)[:count].to(mask.device)] = True
        return mask

    def _calibration_scores(self, state, pi, log_px, x, y, class_lp) -> torch.Tensor:
        """(G,) the labels' log-likelihood (nats) of the calibration samples' personalised
        prediction for each candidate tau, under the received components: ``log_px`` (m, K)
        and ``class_lp`` (m, K, Y) from the E-step (computed here when the label-free E-step
        ran no heads, (m, K, 0))."""
        if class_lp.shape[-1] == 0:
            class_lp = self.component_outputs(x, state=state)[1]  # (m, K, Y)
        return density_weight_scores(pi.log(), log_px, class_lp, y, self.density_weights).float()

    def trained_components(self, weights: torch.Tensor) -> torch.Tensor:
        """(K,) bool: the components a client trains this round, given its (K,) masses w_ck:
        w_ck >= ``min_mass`` and, with ``train_top_m``, among the m largest (ties: lower k)."""
        keep = weights >= self.min_mass
        if self.train_top_m is not None:
            order = torch.argsort(weights, descending=True, stable=True)
            keep[order[self.train_top_m:]] = False
        return keep

    def _train_classifiers(self, theta, x, y, r, gen, state, new_state, updates, weights):
        """"shared_body": train the body and the K heads together on all samples (weights
        (n, K) r_ik); each head's delta joins its component's update (sent only when the VAE's
        is), the body's delta is update K with aggregation weight n_c. Returns the updates,
        the (K + 1,) weights and the cross-entropy (nats)."""
        local = self.classifier_worker.train(theta, x, y, r, gen, self._classifier_loss, "classifiers", state,
                                             "optimizer.classifiers")
        new_state.update(local.optimizer_state)
        trained = self._train_heads(local.theta, x, y, r, gen, state, new_state) if self.head_epochs else local.theta
        body, heads = self._split_classifiers(trained - theta)
        updates = [None if u is None else torch.cat([u, h]) for u, h in zip(updates, heads)] + [body]
        return updates, torch.cat([weights, weights.new_tensor([float(len(x))])]), float(local.losses[0])

    def _train_heads(self, theta, x, y, r, gen, state, new_state) -> torch.Tensor:
        """``head_epochs`` of the heads alone on the features z = body(x) of the (P,) classifier
        vector ``theta`` (computed once, no gradient through the body), same loss and weights;
        returns ``theta`` with the heads' part replaced."""
        body_size, _ = self.classifier_worker.module.split_sizes()
        z = self.classifier_worker.outputs([theta], x, lambda m, xb: m.body(xb).float())[:, 0]  # (n, d)
        local = self.head_worker.train(theta[body_size:], z, y, r, gen, self._classifier_loss, "heads", state,
                                       "optimizer.heads")
        new_state.update(local.optimizer_state)
        return torch.cat([theta[:body_size], local.theta])

    def _classifier_loss(self, classifiers: ComponentClassifiers, x, y, w, norm, gen):
        """One batch of the heads' M-step ("shared_body"): the responsibility-weighted
        cross-entropy of every head, samples with r_ik < ``head_min_responsibility`` left out
        of head k's term; ``norm`` is the (K,) mean weight, summed to mean_i sum_k r_ik."""
        loss = mixture_of_experts_nll if self.head_loss == "mixture" else responsibility_weighted_cross_entropy
        ce = loss(classifiers(x), y, w * (w >= self.head_min_responsibility), norm.sum())
        return ce, ce.detach().reshape(1)

    def _loss(self, component: MixtureComponent, x, y, w, norm, gen) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch of the M-step: the weighted negative ELBO plus the head's weighted
        cross-entropy, the head seeing only samples with r_ik >= ``head_min_responsibility``."""
        neg_elbo, ce = component.loss(x, y, w, norm, gen, w * (w >= self.head_min_responsibility))
        return neg_elbo + ce, torch.stack([neg_elbo.detach(), ce.detach()])
