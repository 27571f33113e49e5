"""FedVTC (Bridging Generalization Gap of Heterogeneous Federated Clients Using Generative Models,
arXiv 2508.01669, ICLR 2026): per-client models of different architectures, per-class feature
statistics instead of model parameters, and a variational transposed-convolution generator
(:mod:`fedgmi.models.vtc`) whose samples of every class fine-tune each client's model. The
round, the server rule and every choice are in :class:`FedVTC`'s docstring.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fedgmi.errors import ConfigError
from fedgmi.federated.aggregation import aggregate_components
from fedgmi.federated.class_statistics import ClassStatistics
from fedgmi.federated.messages import ClientReply, ClientTask, derive_seed
from fedgmi.federated.strategy import ClientState, ProblemSpec, Strategy
from fedgmi.federated.worker import ClientWorker, LocalTraining, OptimizerFactory, initial_vectors
from fedgmi.models.features import CNNFeatures, MLPFeatures, cnn_fits
from fedgmi.models.heads import weighted_cross_entropy
from fedgmi.models.vtc import VTCGenerator, gaussian_kl, sample_class_latents, vtc_terms
from fedgmi.validation import check_choice, check_int, check_number

ARCHITECTURES = {"cnn": CNNFeatures, "mlp": MLPFeatures}
STATISTICS_KEY = "class_statistics"


class FeatureClassifier(nn.Module):
    """f = h o g: a feature extractor g ((B, D) -> (B, d)) and a linear head h ((B, d) -> (B, Y))."""

    def __init__(self, features: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.features, self.head = features, nn.Linear(features.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) inputs -> (B, Y) class logits."""
        return self.head(self.features(x))


class ClassPrior(NamedTuple):
    """The global class Gaussians as the client uses them."""

    means: torch.Tensor
    """(Y, d) class means mu_y."""
    variances: torch.Tensor
    """(Y, d) class variances s2_y, floored at ``min_variance``."""
    present: torch.Tensor
    """(Y,) bool, the classes some client holds (pooled count > 0)."""

    @property
    def classes(self) -> torch.Tensor:
        """(Y',) the indices of the present classes."""
        return self.present.nonzero().squeeze(1)


@contextmanager
def frozen(module: nn.Module):
    """``module`` with ``requires_grad`` off for its parameters (gradients still flow through it)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


class FedVTC(Strategy):
    """FedVTC: per-client models of several architectures, shared class statistics and generator.

    One round at client k (architecture a(k) = ``architectures[k % len(architectures)]``):

    1. Model step (``local_epochs`` over the client's data): f_k = h_k o g_k is trained with
       CE(f_k(x), y) + ``kl_weight`` KL(N(g_k(x), sigma^2) || N(mu_y, s2_y)) (the local feature
       distribution pulled to the received global class Gaussians) + ``synthetic_weight``
       CE(f_k(psi(v)), c) on a synthetic batch: c uniform over the classes some client holds (pooled
       counts > 0), v ~ N(mu_c, s2_c), x' = psi(v) (the fine-tuning that generalises beyond the
       client's own classes; from round ``warmup_rounds`` on).
    2. Generator step (``generator_epochs``, f_k frozen): psi_k from the received psi, with
       -log p(x | v) + KL(N(g_k(x), sigma^2) || N(mu_y, s2_y)) (the VTC's variational terms) +
       ``matching_weight`` CE(f_k(psi(v)), y), v ~ N(mu_y, s2_y) (distribution matching: samples
       drawn from the *global* class Gaussians must look like class y to the client's model).
    3. Upload: the statistics (counts, means, variances) of g_k's features on the client's data,
       and the generator's delta psi_k - psi (``share_generator``).

    Server: the latest statistics of every client that has reported, pooled exactly
    (:meth:`~fedgmi.federated.class_statistics.ClassStatistics.pooled`), broadcast as one flat vector
    in the global state; psi += sum_k n_k delta_k / sum_k n_k (FedAvg over the generators).

    Choices (paper: ..., here: ...):

    - Generator sharing: paper: clients upload statistics, not models; reviewers note the VTCs are
      averaged. Here: averaged when ``share_generator`` (the default; its bytes count both ways:
      a generator trained on a client's own classes alone cannot draw the others), else each
      client keeps its psi_k in its state and only statistics cross (uplink: Y (1 + 2 d) floats).
    - Alternation: paper: f_k and psi_k trained alternately; here: one model block, then one
      generator block per round; the fine-tuning with synthetic images is mixed into the model
      block (with the generator received, which has seen every client's classes; the generator
      after local training has drifted to the client's own classes).
    - sigma: paper: v = z + sigma (.) eps; here: a learned (d,) vector of the generator, detached
      in the model step.
    - Distribution matching: paper: a term that keeps generated samples good when v is drawn from
      the global distribution, form silent; here: the cross-entropy of the client's frozen model on
      psi(v), v from the global Gaussian of each batch label (only the client's own classes: its
      model is no judge of the others).
    - Statistics pool: paper: aggregated each round; here: the latest upload of every client that
      has reported (classes of clients not sampled this round stay known). Variances are floored at
      ``min_variance`` before use (ReLU features have dead dimensions, variance 0).
    - Before any statistics exist (round 0) the KL, matching and synthetic terms are off; a class
      no client has reported has no prior, its samples get no KL and no matching term.
    - Evaluation: the client's own model, K = 1 (as Local); an unseen client has the untrained
      initial model of its architecture.
    - Settings: paper: not found; here: the defaults are the ones measured on MNIST class skew
      (see ``configs/pm_mnist_fedvtc.yaml``), except ``matching_weight`` (on by default, off in
      that config: no measured gain there, ~60% more wall time).

    Args:
        architectures: Feature extractors assigned to clients round-robin by client id, each
            "cnn" (:class:`~fedgmi.models.features.CNNFeatures`) or "mlp"
            (:class:`~fedgmi.models.features.MLPFeatures`).
        feature_dim: d, the common feature size (the generator's latent size).
        generator_channels: (c1, c2) channels of the generator's transposed convolutions.
        optimizer: Builds the local optimizers (default Adam, lr 1e-3); fresh state each round.
        local_epochs: Epochs of the model step.
        generator_epochs: Epochs of the generator step.
        batch_size: Local mini-batch size (real and synthetic batches alike).
        kl_weight: Weight of the feature KL in the model step (nats per sample, summed over d).
        synthetic_weight: Weight of the synthetic cross-entropy in the model step.
        matching_weight: Weight of the distribution-matching term in the generator step.
        warmup_rounds: Rounds before the synthetic fine-tuning starts.
        min_variance: Floor of the global class variances, > 0.
        share_generator: Average the generators (True) or keep one per client (False).

    Raises:
        ConfigError: an unknown architecture or an out-of-range value (one line).
    """

    models_mixture = False
    pixel_density = False

    def __init__(self, architectures: Sequence[str] = ("cnn", "mlp"), feature_dim: int = 64,
                 generator_channels: Sequence[int] = (16, 8), optimizer: OptimizerFactory | None = None,
                 local_epochs: int = 5, generator_epochs: int = 5, batch_size: int = 64, kl_weight: float = 0.002,
                 synthetic_weight: float = 0.5, matching_weight: float = 1.0, warmup_rounds: int = 5,
                 min_variance: float = 0.01, share_generator: bool = True) -> None:
        if isinstance(architectures, str) or not architectures:
            raise ConfigError(f"algorithm.init_args.architectures = {architectures!r} must be a non-empty list of "
                              f"{', '.join(ARCHITECTURES)}")
        for name in architectures:
            check_choice("algorithm.init_args.architectures", name, tuple(ARCHITECTURES))
        for key, value in (("feature_dim", feature_dim), ("generator_epochs", generator_epochs)):
            check_int(f"algorithm.init_args.{key}", value, 1)
        check_int("algorithm.init_args.warmup_rounds", warmup_rounds, 0)
        for key, value in (("kl_weight", kl_weight), ("synthetic_weight", synthetic_weight),
                           ("matching_weight", matching_weight)):
            check_number(f"algorithm.init_args.{key}", value, 0)
        check_number("algorithm.init_args.min_variance", min_variance, 0, low_open=True)
        self.architectures, self.feature_dim = tuple(architectures), int(feature_dim)
        self.generator_channels = tuple(generator_channels)
        self.training = LocalTraining(local_epochs, batch_size, optimizer)
        self.generator_training = LocalTraining(generator_epochs, batch_size, optimizer)
        self.kl_weight, self.synthetic_weight, self.matching_weight = kl_weight, synthetic_weight, matching_weight
        self.warmup_rounds, self.min_variance, self.share_generator = warmup_rounds, min_variance, share_generator

    # ------------------------------------------------------------------ models
    def build_model(self, architecture: str) -> FeatureClassifier:
        """A fresh f = h o g of the given architecture."""
        if architecture == "cnn" and not cnn_fits(self.spec.image_shape):
            shape = "x".join(str(int(n)) for n in self.spec.image_shape)
            raise ConfigError(f"algorithm.init_args.architectures = {list(self.architectures)!r}: 'cnn' needs images of "
                              f"at least 12 x 12 pixels, these are {shape}; give --algorithm.init_args.architectures "
                              "'[mlp]' (or a dataset of larger images)")
        features = ARCHITECTURES[architecture](self.spec.image_shape, self.feature_dim)
        return FeatureClassifier(features, self.spec.num_classes)

    def build_generator(self) -> VTCGenerator:
        """A fresh VTC generator psi for this problem."""
        return VTCGenerator(self.spec.image_shape, self.feature_dim, self.generator_channels)

    def architecture(self, client_id: int) -> str:
        """a(k): the client's architecture, round-robin by client id."""
        return self.architectures[int(client_id) % len(self.architectures)]

    def setup(self, spec: ProblemSpec, fabric, seed: int) -> None:
        """Initial models (one per architecture), the generator, the workers, empty statistics."""
        super().setup(spec, fabric, seed)
        names = list(dict.fromkeys(self.architectures))
        self.initial_models = {name: initial_vectors(partial(self.build_model, name), a + 1, seed)[a].to(fabric.device)
                               for a, name in enumerate(names)}
        self.model_workers = {name: ClientWorker(fabric, self.build_model(name), self.training) for name in names}
        self._psi = initial_vectors(self.build_generator, 1, seed + 1)[0].to(fabric.device)
        self.generator_worker = ClientWorker(fabric, self.build_generator(), self.generator_training)
        self.statistics_size = spec.num_classes * (1 + 2 * self.feature_dim)
        self._pooled = torch.zeros(self.statistics_size, device=fabric.device)
        self.client_statistics: dict[int, torch.Tensor] = {}

    @property
    def global_state(self) -> tuple[torch.Tensor, ...]:
        """(psi (P_psi,), pooled statistics (Y (1 + 2 d),)); without ``share_generator`` the
        statistics only."""
        return (self._psi, self._pooled) if self.share_generator else (self._pooled,)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(),
                "client_statistics": {c: v.cpu() for c, v in self.client_statistics.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        device = self.fabric.device
        *psi, self._pooled = [t.to(device) for t in state["global_state"]]
        self._psi = psi[0] if psi else self._psi
        self.client_statistics = {int(c): v.to(device) for c, v in state["client_statistics"].items()}

    # ------------------------------------------------------------------ rounds
    def configure_round(self, round_idx: int, client_ids: Sequence[int]) -> list[ClientTask]:
        """The global state to every sampled client; one update (the generator's) expected back
        when generators are shared, none otherwise."""
        sizes = (self._psi.numel(),) if self.share_generator else ()
        return [ClientTask(round_idx, int(c), derive_seed(self.seed, round_idx, int(c)), self.global_state,
                           algorithm=self.name, upload_sizes=sizes) for c in client_ids]

    def prior(self, flat: torch.Tensor) -> ClassPrior | None:
        """The global class Gaussians from the received (Y (1 + 2 d),) statistics (counts clamped
        at 0 and variances floored, so that a lossy downlink cannot break them), or ``None``
        before any client has reported."""
        flat = flat.clone()
        flat[:self.spec.num_classes].clamp_(min=0.0)
        stats = ClassStatistics.from_flat(flat, self.spec.num_classes)
        present = stats.counts > 0.5
        if not bool(present.any()):
            return None
        return ClassPrior(stats.means, stats.variances.clamp_min(self.min_variance), present)

    def client_update(self, task: ClientTask, data, state: ClientState) -> tuple[ClientReply, ClientState]:
        """Model step, generator step, statistics (see the module docstring)."""
        device = self.fabric.device
        gen = torch.Generator(device).manual_seed(task.seed)
        x, y = data.x_train.to(device), data.y_train.to(device)  # (n, D), (n,)
        ones = torch.ones(len(x), device=device)
        name = self.architecture(task.client_id)
        psi_vec = task.global_state[0] if self.share_generator else state.get("generator", self._psi)
        prior = self.prior(task.global_state[-1])
        synthetic = prior is not None and task.round >= self.warmup_rounds and self.synthetic_weight > 0
        psi = self.generator_worker.load(psi_vec)
        model = self.model_workers[name].train(state.get("model", self.initial_models[name]), x, y, ones, gen,
                                               self.model_loss(psi, prior, synthetic), what="model step")
        f = self.model_workers[name].module  # now holds the trained f_k
        with frozen(f):
            psi_k = self.generator_worker.train(psi_vec, x, y, ones, gen, self.generator_loss(f, prior),
                                                what="generator step")
            stats = ClassStatistics.of(torch.cat([f.features(xb) for xb in x.split(2048)]), y, self.spec.num_classes)
        metrics = {"cross_entropy": float(model.losses[0]), "feature_kl": float(model.losses[1]),
                   "synthetic_cross_entropy": float(model.losses[2]), "reconstruction": float(psi_k.losses[0]),
                   "matching_cross_entropy": float(psi_k.losses[2])}
        updates = [psi_k.theta - psi_vec] if self.share_generator else []
        weights = [float(len(x))] if self.share_generator else []
        reply = task.reply(len(x), updates, weights, metrics, {STATISTICS_KEY: stats.flat()})
        new_state = {"model": model.theta} if self.share_generator else {"model": model.theta, "generator": psi_k.theta}
        return reply, new_state

    def model_loss(self, psi: VTCGenerator, prior: ClassPrior | None, synthetic: bool):
        """The model step's batch loss (worker :data:`~fedgmi.federated.worker.LossFn`): scalar
        CE + kl_weight KL + synthetic_weight CE_synthetic, reporting (3,) those three terms (nats)."""
        log_sigma = psi.log_sigma.detach()

        def loss(model, xb, yb, wb, norm, gen):
            z = model.features(xb)  # (B, d)
            ce = weighted_cross_entropy(model.head(z), yb, wb, norm)
            kl = syn = torch.zeros((), device=xb.device)
            if prior is not None:
                kl = (feature_kl(z, 2 * log_sigma, prior, yb) * prior.present[yb]).mean()
            if synthetic:
                classes = prior.classes
                c = classes[torch.randint(len(classes), (len(xb),), generator=gen, device=xb.device)]
                with torch.no_grad():
                    xs = psi(sample_class_latents(prior.means, prior.variances, c, gen))  # (B, D)
                syn = F.cross_entropy(model(xs).float(), c)
            objective = ce + self.kl_weight * kl + self.synthetic_weight * syn
            return objective, torch.stack([ce.detach(), kl.detach(), syn.detach()])

        return loss

    def generator_loss(self, model: FeatureClassifier, prior: ClassPrior | None):
        """The generator step's batch loss: mean reconstruction + KL (on samples whose class has a
        prior) + matching_weight CE(f_k(psi(v)), y), v ~ N(mu_y, s2_y); reports (3,) those terms."""

        def loss(psi, xb, yb, wb, norm, gen):
            with torch.no_grad():
                z = model.features(xb)
            if prior is None:
                means, logvars = torch.zeros_like(z), torch.zeros_like(z)
                known = torch.zeros(len(xb), dtype=torch.bool, device=xb.device)
            else:
                means, logvars, known = prior.means[yb], prior.variances[yb].log(), prior.present[yb]
            reconstruction, kl = vtc_terms(psi, z, xb, means, logvars, gen)
            kl = (kl * known).mean()
            matching = torch.zeros((), device=xb.device)
            if prior is not None and self.matching_weight > 0 and bool(known.any()):
                v = sample_class_latents(prior.means, prior.variances, yb[known], gen)
                matching = F.cross_entropy(model(psi(v)).float(), yb[known])
            objective = reconstruction.mean() + kl + self.matching_weight * matching
            return objective, torch.stack([reconstruction.mean().detach(), kl.detach(), matching.detach()])

        return loss

    def aggregate(self, round_idx: int, replies: Sequence[ClientReply]) -> dict[str, float]:
        """Pool the latest statistics of every client that has reported; average the generators."""
        if not replies:
            return {}
        for r in replies:
            self.client_statistics[r.client_id] = r.statistics[STATISTICS_KEY].to(self._pooled.device).float()
        parts = [ClassStatistics.from_flat(self.client_statistics[c], self.spec.num_classes)
                 for c in sorted(self.client_statistics)]
        self._pooled = ClassStatistics.pooled(parts).flat()
        if self.share_generator:
            self._psi = aggregate_components([self._psi], [r.updates for r in replies],
                                             [r.aggregation_weights.tolist() for r in replies])[0]
        total = sum(r.num_examples for r in replies)
        out = {f"train_{key}": sum(r.metrics[key] * r.num_examples for r in replies) / total
               for key in ("cross_entropy", "feature_kl", "synthetic_cross_entropy", "reconstruction",
                           "matching_cross_entropy")}
        out["classes_pooled"] = float((self._pooled[:self.spec.num_classes] > 0).sum())
        return out

    # ------------------------------------------------------------------ evaluation
    def client_model(self, client_id: int) -> torch.Tensor:
        """(P,) the client's own model f_k, or its architecture's initial model if it never trained."""
        return self.client_state.get(int(client_id), {}).get("model", self.initial_models[self.architecture(client_id)])

    @torch.no_grad()
    def client_component_outputs(self, client_id, part, x, estimator=None, num_samples=None, generator=None):
        """(N, 1) zeros and (N, 1, Y) log p(y | x) of the client's own model (K = 1, as Local)."""
        x = x.to(self.fabric.device)
        worker = self.model_workers[self.architecture(client_id)]
        class_lp = worker.outputs([self.client_model(client_id)], x, lambda m, xb: F.log_softmax(m(xb).float(), -1))
        return torch.zeros(len(x), 1, device=x.device), class_lp

    def component_outputs(self, x, estimator=None, num_samples=None, generator=None):
        """No global classifier: the outputs of client 0's model."""
        return self.client_component_outputs(0, "test", x)


def feature_kl(z: torch.Tensor, logvar: torch.Tensor, prior: ClassPrior, labels: torch.Tensor) -> torch.Tensor:
    """(B,) KL(N(z_i, diag e^logvar) || N(mu_{y_i}, diag s2_{y_i})) in nats for (B, d) features
    ``z``, (d,) ``logvar`` and (B,) labels (paper: the KL aligning the local feature distribution
    with the global class Gaussians)."""
    return gaussian_kl(z, logvar, prior.means[labels], prior.variances[labels].log())
