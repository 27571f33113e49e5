"""FedGMI: federated generative mixture inference (Hou, Shi, Fan, Letaief, arXiv 2605.08760).

K components, each a VAE density estimator of x. One round (DESIGN.md, steps 1-5):

1. the server sends the K component parameter vectors to the sampled clients;
2. client E-step: log r_ik = log pi_ck + log p_k(x_i) - logsumexp_k(...), with log p_k(x) the
   ELBO (or IWAE bound) of component k;
3. client M-step: pi_c = mean_i r_ik (iterated ``proportion_iters`` times with the likelihoods
   fixed), then each component k trains on the client's data weighted by r_ik (weighted
   negative ELBO) for ``local_epochs`` epochs;
4. the client uploads per-component deltas and weights w_ck = sum_i r_ik;
5. the server averages each component's deltas with weights w_ck.

Symmetry breaking (documented choice, measured in the README): with ``init="topic"`` (default)
the first ``warmup_rounds`` rounds take their responsibilities from a federated topic model
over fine k-means clusters (:mod:`fedgmi.algorithms.topic_init`) instead of from the VAEs, so
each component starts on data that is mostly one inherent distribution. ``init="random"``
starts every component from its own random weights with uniform proportions (plain EM).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from fedgmi.algorithms.topic_init import TopicInit, fit_topic_init
from fedgmi.errors import ConfigError
from fedgmi.federated.aggregation import aggregate_components
from fedgmi.federated.mixture import check_rule, estimate_proportions
from fedgmi.federated.strategy import ProblemSpec, Strategy
from fedgmi.models import ComponentVAE
from fedgmi.types import ClientReply, ClientTask

INITS = ("topic", "random")
ComponentFactory = Callable[[tuple[int, ...]], ComponentVAE]
OptimizerFactory = Callable[[Iterable], torch.optim.Optimizer]


class FedGMI(Strategy):
    """FedGMI with VAE components, label-free E-step.

    Args:
        component: Builds one component from the image shape; default ``ComponentVAE`` with
            its defaults (MLP 784-400-20). In config: ``class_path``/``init_args`` without
            ``image_shape``.
        optimizer: Builds the local optimizer from parameters; default Adam(lr=1e-3). A fresh
            optimizer state is used for every client and component.
        local_epochs: Passes over the client's data per component per round.
        batch_size: Local mini-batch size.
        estimator: Log-likelihood estimate for the E-step: "elbo" or "iwae".
        num_samples: Latent samples of that estimate.
        responsibility: "soft" (posterior) or "hard" (one-hot arg-max, classification EM).
        temperature: Temperature T of the likelihood in the E-step, r ~ pi * p(x)^(1/T)
            (1 = exact posterior; see fedgmi.federated.mixture.responsibilities).
        proportion_iters: EM iterations on pi with likelihoods fixed, per E-step.
        min_mass: A client trains and uploads component k only when w_ck = sum_i r_ik is at
            least this (in samples); smaller contributions are dropped.
        weight_floor: Samples with r_ik below this are skipped when training component k.
        init: Symmetry breaking, "topic" (default) or "random" (see module docstring).
        warmup_rounds: Rounds whose responsibilities come from the topic model ("topic").
        topic_clusters: Fine k-means clusters M of the topic initialisation.
        topic_restarts: Random restarts of the federated topic model.

    Raises:
        ConfigError: an out-of-range value or unknown option name (one line).
    """

    def __init__(
        self,
        component: ComponentFactory | None = None,
        optimizer: OptimizerFactory | None = None,
        local_epochs: int = 1,
        batch_size: int = 64,
        estimator: str = "elbo",
        num_samples: int = 1,
        responsibility: str = "soft",
        temperature: float = 1.0,
        proportion_iters: int = 10,
        min_mass: float = 1.0,
        weight_floor: float = 1e-3,
        init: str = "topic",
        warmup_rounds: int = 3,
        topic_clusters: int = 60,
        topic_restarts: int = 20,
    ) -> None:
        check_rule(responsibility, temperature)
        if init not in INITS:
            raise ConfigError(f"unknown init {init!r}; choose one of: {', '.join(INITS)}")
        for name, value, low in [
            ("local_epochs", local_epochs, 1), ("batch_size", batch_size, 1),
            ("num_samples", num_samples, 1), ("proportion_iters", proportion_iters, 1),
            ("warmup_rounds", warmup_rounds, 0), ("topic_clusters", topic_clusters, 2),
            ("topic_restarts", topic_restarts, 1),
        ]:
            if int(value) != value or value < low:
                raise ConfigError(f"{name} = {value!r} must be an integer >= {low}")
        if estimator not in ("elbo", "iwae"):
            raise ConfigError(f"unknown estimator {estimator!r}; choose one of: elbo, iwae")
        self.component_factory = component or ComponentVAE
        self.optimizer_factory = optimizer or (lambda p: torch.optim.Adam(p, lr=1e-3))
        self.local_epochs, self.batch_size = local_epochs, batch_size
        self.estimator, self.num_samples = estimator, num_samples
        self.responsibility, self.temperature = responsibility, temperature
        self.proportion_iters, self.min_mass, self.weight_floor = proportion_iters, min_mass, weight_floor
        self.init, self.warmup_rounds = init, warmup_rounds if init == "topic" else 0
        self.topic_clusters, self.topic_restarts = topic_clusters, topic_restarts
        self.topic: TopicInit | None = None

    # ------------------------------------------------------------------ server side
    def setup(self, spec: ProblemSpec, fabric, seed: int) -> None:
        """Build K independently initialised components and one reusable worker."""
        super().setup(spec, fabric, seed)
        states = []
        for k in range(spec.num_components):
            torch.manual_seed(seed * 1000 + k)  # component k's own initial weights
            states.append(parameters_to_vector(self.component_factory(spec.image_shape).parameters()))
        vae = self.component_factory(spec.image_shape)
        self.worker, self.local_optimizer = fabric.setup(vae, self.optimizer_factory(vae.parameters()))
        self.vae: ComponentVAE = self.worker.module  # raw module: non-forward methods
        self._global = [s.detach().to(fabric.device) for s in states]

    @property
    def global_state(self) -> tuple[torch.Tensor, ...]:
        return tuple(self._global)

    def initialize(self, clients) -> dict[str, float]:
        """Topic-model initialisation over all clients (``init="topic"``), see topic_init."""
        if self.init != "topic":
            return {}
        self.topic = fit_topic_init(
            [c.x_train for c in clients], self.spec.num_components,
            num_clusters=self.topic_clusters, restarts=self.topic_restarts, seed=self.seed,
        )
        for c, pi in zip(clients, self.topic.proportions):
            self.client_state[c.client_id] = {"pi": pi.to(self.fabric.device)}
        return {"bytes_up": self.topic.bytes_up, "bytes_down": self.topic.bytes_down}

    def round_settings(self, round_idx: int) -> dict[str, float | int | str]:
        return {"phase": "warmup" if round_idx < self.warmup_rounds else "vae"}

    def aggregate(self, round_idx: int, replies: Sequence[ClientReply]) -> dict[str, float]:
        if not replies:
            return {}
        self._global = aggregate_components(
            self._global, [r.updates for r in replies], [r.component_weights.tolist() for r in replies]
        )
        sent = sum(u is not None for r in replies for u in r.updates)
        neg_elbo = sum(r.metrics["neg_elbo"] * r.num_examples for r in replies)
        return {
            "train_neg_elbo": neg_elbo / sum(r.num_examples for r in replies),
            "components_sent_per_client": sent / len(replies),
        }

    # ------------------------------------------------------------------ client side
    def load_component(self, theta: torch.Tensor) -> ComponentVAE:
        """Load a (P,) parameter vector into the reusable worker and return it."""
        vector_to_parameters(theta, self.vae.parameters())
        return self.vae

    @torch.no_grad()
    def component_log_likelihood(
        self, x: torch.Tensor, estimator: str | None = None, num_samples: int | None = None,
        state: Sequence[torch.Tensor] | None = None, generator: torch.Generator | None = None,
        chunk: int = 2048,
    ) -> torch.Tensor:
        """(N, K) log p_k(x_i) in nats (ELBO or IWAE bound) under each component of ``state``
        (default: the global state), computed in chunks of ``chunk`` samples."""
        state = self._global if state is None else state
        x = x.to(self.fabric.device)
        columns = []
        for theta in state:
            vae = self.load_component(theta)
            with self.fabric.autocast():
                parts = [
                    vae.log_likelihood(xb, estimator or self.estimator,
                                       num_samples or self.num_samples, generator).float()
                    for xb in x.split(chunk)
                ]
            columns.append(torch.cat(parts))
        return torch.stack(columns, dim=1)  # (N, K)

    def client_update(self, task: ClientTask, data) -> ClientReply:
        """E-step, proportion update and weighted local training of each component."""
        device = self.fabric.device
        gen = torch.Generator(device).manual_seed(task.seed)
        x = data.x_train.to(device)  # (n, D)
        if task.settings.get("phase") == "warmup":
            log_lik = self.topic.log_likelihood_of(x)  # (n, K)
        else:
            log_lik = self.component_log_likelihood(x, state=task.global_state, generator=gen)
        pi, r = estimate_proportions(
            log_lik, self.client_proportions(task.client_id), self.proportion_iters,
            self.responsibility, self.temperature,
        )
        self.client_state[task.client_id] = {"pi": pi}
        weights = r.sum(0)  # (K,) w_ck
        updates, losses = [], []
        for k, theta in enumerate(task.global_state):
            if weights[k] < self.min_mass:
                updates.append(None)
                continue
            new_theta, loss = self._train_component(theta, x, r[:, k], gen)
            updates.append(new_theta - theta)
            losses.append(loss * float(weights[k]))
        return ClientReply(
            client_id=task.client_id, num_examples=len(x), component_weights=weights.cpu(),
            updates=tuple(updates),
            metrics={"neg_elbo": sum(losses) / max(float(weights.sum()), 1e-12)},
        )

    def _train_component(
        self, theta: torch.Tensor, x: torch.Tensor, r: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, float]:
        """Weighted negative-ELBO training of one component from ``theta`` on (n, D) ``x``
        with (n,) weights ``r``; returns the new (P,) vector and the last epoch's mean loss."""
        vae = self.load_component(theta)
        self.local_optimizer.state.clear()  # fresh local optimizer state per client
        keep = r >= self.weight_floor
        xk, wk = x[keep], r[keep]  # (m, D), (m,)
        norm = wk.mean()  # loss = mean_i w_i nll_i / mean(w): unbiased weighted mean, no noise blow-up
        for _ in range(self.local_epochs):
            order = torch.randperm(len(xk), generator=gen, device=xk.device)
            total = torch.zeros((), device=xk.device)
            for idx in order.split(self.batch_size):
                with self.fabric.autocast():
                    nll = -vae.elbo(xk[idx], generator=gen)  # (b,)
                loss = (wk[idx] * nll.float()).mean() / norm
                self.local_optimizer.zero_grad(set_to_none=True)
                self.fabric.backward(loss)
                self.local_optimizer.step()
                total += loss.detach() * len(idx)
        return parameters_to_vector(vae.parameters()).detach().clone(), float(total) / max(len(xk), 1)
