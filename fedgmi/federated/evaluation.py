"""Evaluation on the clients' test parts (the only place the ground truth is used).

Every client re-estimates its mixture proportions from its own training part with the current
global components (:func:`~fedgmi.federated.responsibilities.estimate_proportions`; a training client
starts from its stored proportions and uses the strategy's E-step evidence, labels included where
the strategy's evidence uses them: training data has labels; an unseen client starts from uniform
and uses its unlabelled inputs only, no gradient step). Then, on its test part, each sample is
assigned from x alone, as prediction sees it: arg-max_k log pi_ck + log p_k(x) (the evidence
without labels; for a classifier-only method log p_k(x) = 0, so the client's arg-max proportion),
and classified by the personalised mixture p_c(y | x) = sum_k post_ck(x) p_k(y | x) (labels never
used there), post_ck(x) proportional to pi_ck p_k(x)^tau with the strategy's ``density_weight``
tau (1, the mixture's posterior, unless the strategy chose another; the x-only assignment uses
the same tau: arg-max_k log pi_ck + tau log p_k(x)). A strategy whose E-step evidence uses labels (``evidence_uses_labels``: FedGMI's
"joint" E-step, the classifier mixtures with ``label_evidence``) also gets
``assignment_accuracy_label_informed``: the same with its evidence given the test labels,
arg-max_k log pi_ck + evidence_k(x, y), scored through the same map (not what prediction sees).

Mixture scores use one map of learned to true components, found on the training clients' x-only
assignments (:mod:`fedgmi.metrics.mixture_scores`): a Hungarian matching when the learned K equals
the true K, else many-to-one (each learned component to the true one most of its samples come
from), with proportions summed over the learned components mapped to each true one. They are
computed with the torchmetrics ``Metric``s of :mod:`fedgmi.metrics.mixture_metrics`, equal to
those reference functions bit for bit. The map is returned (``Evaluation.mapping``, written as
``component_matching`` in metrics.json) and ``num_components_learned`` is a metric.

Generalisation (``evaluation.generalization``): each training client's personalised predictor,
with its proportions, on the *pool*, the test parts of all clients together (every class any
client holds, as often as the federation holds it: the federation's own test distribution; the
FedVTC paper's generalisation test, Sec. 5, on a global test set). Plain accuracy, not balanced
over classes: under strong class skew some classes have a handful of examples in the whole
federation (Dirichlet(0.1) over 3 components on the MNIST test split: 0-16 training examples
for 2-3 of the 10 classes), and a class mean would be dominated by them.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import logsumexp

from fedgmi.errors import ConfigError
from fedgmi.federated.strategy import EvaluationHooks, Strategy
from fedgmi.metrics import (
    AssignmentAccuracy,
    MixtureScores,
    ProportionError,
    aggregate_proportions,
    component_accuracy_extremes,
    learned_groups,
    learned_order,
    nats_to_bits_per_dim,
    score_mixture,
)
from fedgmi.models import ESTIMATORS
from fedgmi.models.personalized import mixture_predict
from fedgmi.validation import check_choice, check_int


@dataclass(frozen=True)
class EvalConfig:
    """How the likelihoods of evaluation are estimated.

    Attributes:
        estimator: "iwae" (default, tighter) or "elbo".
        num_samples: Importance samples of the estimate on the test parts (each sample's
            assignment, prediction and test NLL).
        proportion_samples: Importance samples when a client re-estimates its proportions on
            its training part (``None`` = ``num_samples``). Proportions average the estimate
            over a client's hundreds of samples, so fewer suffice there than for one sample's
            assignment (measured in docs/benchmarks/fedgmi-design.md, "The default config").
        proportion_iters: EM iterations when a client re-estimates its proportions.
        generalization: Also score every training client's personalised predictor on the
            pooled test parts of all clients (``generalization_accuracy_mean``; see the module
            docstring). Off by default: it costs one more pass per client.
    """

    estimator: str = "iwae"
    num_samples: int = 8
    proportion_samples: int | None = None
    proportion_iters: int = 20
    generalization: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.generalization, bool):
            raise ConfigError(f"evaluation.generalization = {self.generalization!r} must be true or false")
        check_choice("evaluation.estimator", self.estimator, ESTIMATORS)
        check_int("evaluation.num_samples", self.num_samples, 1)
        if self.proportion_samples is not None:
            check_int("evaluation.proportion_samples", self.proportion_samples, 1)

    @property
    def proportion_settings(self) -> tuple[str, int]:
        """(estimator, samples) of the proportions' re-estimation on a training part."""
        return self.estimator, self.proportion_samples or self.num_samples
        check_int("evaluation.proportion_iters", self.proportion_iters, 1)


@dataclass(frozen=True)
class Evaluation:
    """Result of :func:`evaluate`. K_learned is the strategy's number of components, K_true the
    scenario's (equal unless the algorithm was told another ``num_components``).

    Attributes:
        metrics: Flat scalar metrics (stable keys, listed in docs/guide/outputs.md).
        mapping: (K_learned,) learned -> true component map (one-to-one when the K agree).
        estimated_proportions: (C, K_learned) estimated pi of every client, columns by learned component.
        component_accuracy: (K_true, K_learned) accuracy of learned component j's head (column) on true
            distribution t's test data (row), training clients; raw column order.
        client_model_accuracy: (K_true,) accuracy of the personalised client models per true t.
        test_nll: (K_true,) per TRUE component, the NLL in nats of its test data under the learned
            components mapped to it (their uniform mixture; NaN when none is).
    """

    metrics: dict[str, float]
    mapping: np.ndarray
    estimated_proportions: np.ndarray
    component_accuracy: np.ndarray
    client_model_accuracy: np.ndarray
    test_nll: np.ndarray

    @property
    def component_accuracy_matched(self) -> np.ndarray:
        """(K_true, K_learned) the table with its columns ordered by true component
        (:func:`~fedgmi.metrics.learned_order`): one-to-one, column t is the component matched
        to true distribution t, so the diagonal is each component on its own distribution."""
        return self.component_accuracy[:, learned_order(self.mapping)]

    @property
    def proportions_by_true(self) -> np.ndarray:
        """(C, K_true) estimated proportions summed over the learned components mapped to each
        true one (:func:`~fedgmi.metrics.aggregate_proportions`)."""
        return aggregate_proportions(self.estimated_proportions, self.mapping, len(self.client_model_accuracy))


@torch.no_grad()
def _client_outputs(strategy: Strategy, client, seen: bool, config: EvalConfig, gen) -> dict:
    """One client's proportions and per-test-sample outputs."""
    y_train = client.y_train if seen else None
    cid, settings = client.client_id, (config.estimator, config.num_samples, gen)
    lp, clp = strategy.client_component_outputs(cid, "train", client.x_train, *config.proportion_settings, gen)
    start = strategy.client_proportions(cid) if seen else None
    pi = strategy.estimate_client_proportions(strategy.evidence(lp, clp, y_train), start, config.proportion_iters)
    lp, clp = strategy.client_component_outputs(cid, "test", client.x_test, *settings)
    y, tau = client.y_test.to(lp.device), strategy.density_weight
    out = {
        "pi": pi.cpu(),
        "assigned": (pi.log() + tau * strategy.evidence(lp, clp, None)).argmax(1).cpu(),  # (n,) from x alone
        "personal_correct": (mixture_predict(pi.log(), lp, clp, tau).argmax(1) == y).cpu(),  # (n,)
        "component_correct": (clp.argmax(2) == y[:, None]).cpu(),  # (n, K)
        "log_px": lp.cpu(),  # (n, K)
    }
    if _label_informed(strategy):
        out["assigned_label_informed"] = (pi.log() + strategy.evidence(lp, clp, y)).argmax(1).cpu()  # (n,)
    return out


@torch.no_grad()
def evaluate(strategy: Strategy, scenario, config: EvalConfig, seed: int = 0,
             unseen: Collection[int] = ()) -> Evaluation:
    """Score assignments, proportions, personalised accuracy and per-component test NLL.

    Args:
        strategy: A trained strategy.
        scenario: The :class:`~fedgmi.data.Scenario` (clients and ground truth).
        config: Estimator settings.
        seed: Seed of the latent noise of the estimates.
        unseen: Ids of clients that never trained.

    Returns:
        An :class:`Evaluation`; its metric keys are listed in docs/guide/outputs.md.
    """
    gen = torch.Generator(strategy.fabric.device).manual_seed(seed)
    attach_truth(strategy, scenario)
    unseen = {int(c) for c in unseen}
    outs = [_client_outputs(strategy, c, c.client_id not in unseen, config, gen) for c in scenario.clients]
    seen_ids = [c.client_id for c in scenario.clients if c.client_id not in unseen]
    cat = _concat(outs, seen_ids, scenario)
    true_pi = scenario.truth.proportions.numpy()
    est = torch.stack([o["pi"] for o in outs]).double().numpy()
    num_learned = est.shape[1]
    if not strategy.models_mixture:  # FedAvg, Local: no mixture, so no mixture scores (NaN)
        est = np.full_like(true_pi, np.nan)
    scores = _mixture_scores(strategy, cat, est[seen_ids], true_pi[seen_ids])
    per_client_acc = np.array([outs[c]["personal_correct"].float().mean().item() for c in seen_ids])
    table, client_model = _accuracy_tables(cat, true_pi.shape[1], est.shape[1])
    nll = _matched_nll(cat["log_px"], cat["z"], scores.mapping, true_pi.shape[1])
    if not strategy.pixel_density:
        nll = np.full_like(nll, np.nan)
    diag_min, offdiag_max = component_accuracy_extremes(table, scores.mapping)
    metrics = {
        "assignment_accuracy": scores.assignment_accuracy,
        "nmi": scores.nmi,
        "proportion_error_tv": scores.proportion_error_tv,
        "proportion_error_max": scores.proportion_error_max,
        "num_components_learned": float(num_learned),
        "client_accuracy_mean": float(per_client_acc.mean()),
        "client_accuracy_p10": float(np.percentile(per_client_acc, 10)),
        "component_accuracy_diag_min": diag_min,
        "component_accuracy_offdiag_max": offdiag_max,
        "test_nll": _nanmean(nll),
        "test_nll_bits_per_dim": nats_to_bits_per_dim(_nanmean(nll), int(np.prod(scenario.image_shape))),
    }
    if _label_informed(strategy):
        label_informed = AssignmentAccuracy(true_pi.shape[1], num_learned, mapping=scores.mapping)
        label_informed.update(torch.from_numpy(cat["z"]), torch.from_numpy(cat["assigned_label_informed"]))
        metrics["assignment_accuracy_label_informed"] = label_informed.compute().item()
    if config.generalization:
        gen_acc = generalization_accuracy(strategy, scenario, config, {c: outs[c]["pi"] for c in seen_ids}, gen)
        metrics["generalization_accuracy_mean"] = float(gen_acc.mean())
        metrics["generalization_accuracy_p10"] = float(np.percentile(gen_acc, 10))
    if unseen:
        ids = sorted(unseen)
        unseen_tv = ProportionError(scores.mapping, true_pi.shape[1])
        unseen_tv.update(torch.as_tensor(est[ids]), true_pi[ids])
        metrics["unseen_client_accuracy_mean"] = float(np.mean(
            [outs[c]["personal_correct"].float().mean().item() for c in ids]))
        metrics["unseen_proportion_error_tv"] = unseen_tv.compute().item()
    return Evaluation(metrics, scores.mapping, est, table, client_model, nll)


#: The ``part`` name of the pooled test parts of all clients (see :func:`generalization_accuracy`).
POOL = "pool"


@torch.no_grad()
def generalization_accuracy(strategy: Strategy, scenario, config: EvalConfig, proportions: dict[int, torch.Tensor],
                            gen: torch.Generator) -> np.ndarray:
    """Accuracy of each client's personalised predictor on the pool (the test parts of every
    client of ``scenario``, in client order), with its proportions (paper: FedVTC, Sec. 5,
    tests on a global test set; here: the pool, the federation's own test distribution).

    Args:
        proportions: Client id -> (K,) its proportions, for the clients to score.

    Returns:
        (len(proportions),) accuracies in [0, 1], in the order of ``proportions``.
    """
    x = torch.cat([c.x_test for c in scenario.clients])  # (N_pool, D)
    y = torch.cat([c.y_test for c in scenario.clients])
    settings = (config.estimator, config.num_samples, gen)
    shared = type(strategy).client_component_outputs is EvaluationHooks.client_component_outputs
    outputs = strategy.component_outputs(x, *settings) if shared else None  # the same for every client
    scores = []
    for cid, pi in proportions.items():
        lp, clp = outputs if outputs is not None else strategy.client_component_outputs(cid, POOL, x, *settings)
        predicted = mixture_predict(pi.to(lp.device).log(), lp, clp, strategy.density_weight).argmax(1).cpu()
        scores.append((predicted == y).double().mean().item())
    return np.array(scores)


def attach_truth(strategy: Strategy, scenario) -> None:
    """Hand the ground truth to a strategy that declares ``uses_ground_truth`` (the Oracle);
    the one place any strategy can see it."""
    if strategy.uses_ground_truth:
        strategy.attach_ground_truth(scenario.truth)


def _mixture_scores(strategy: Strategy, cat: dict[str, np.ndarray], est: np.ndarray,
                    true_pi: np.ndarray) -> MixtureScores:
    """Matched scores; all NaN (identity matching) for a strategy without a mixture."""
    if strategy.models_mixture:
        return score_mixture(cat["z"], cat["assigned"], est, true_pi)
    k, nan = true_pi.shape[1], float("nan")
    return MixtureScores(nan, nan, nan, nan, np.arange(k))


def _label_informed(strategy: Strategy) -> bool:
    """Whether ``assignment_accuracy_label_informed`` is reported: a mixture whose E-step
    evidence uses labels (FedAvg and Local have no E-step)."""
    return strategy.models_mixture and strategy.evidence_uses_labels


def _nanmean(values: np.ndarray) -> float:
    """Mean over the finite entries; NaN (no warning) when there are none."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _concat(outs: list[dict], ids: list[int], scenario) -> dict[str, np.ndarray]:
    """Per-test-sample arrays of the given clients, concatenated, with true components."""
    keys = ("assigned", "assigned_label_informed", "personal_correct", "component_correct", "log_px")
    cat = {key: torch.cat([outs[c][key] for c in ids]).numpy() for key in keys if key in outs[ids[0]]}
    cat["z"] = torch.cat([scenario.truth.z_test[c] for c in ids]).numpy()
    return cat


def _accuracy_tables(cat: dict[str, np.ndarray], num_components: int,
                     num_learned: int) -> tuple[np.ndarray, np.ndarray]:
    """(K_true, K_learned) head accuracy per (true distribution, learned component) and (K_true,)
    client-model accuracy per true distribution (NaN where a distribution has no test samples,
    and in the columns of components a method does not have: FedAvg and Local have one)."""
    table = np.full((num_components, num_learned), np.nan)
    client_model = np.full(num_components, np.nan)
    for t in range(num_components):
        mask = cat["z"] == t
        if mask.any():
            correct = cat["component_correct"][mask]  # (n_t, K learned); K learned = 1 without a mixture
            table[t, :correct.shape[1]] = correct.mean(0)
            client_model[t] = cat["personal_correct"][mask].mean()
    return table, client_model


def _matched_nll(log_lik: np.ndarray, true_z: np.ndarray, mapping: np.ndarray, num_components: int) -> np.ndarray:
    """(K_true,) for each true component t, the NLL in nats of its test samples under the learned
    components J_t mapped to t: -mean log (1/|J_t|) sum_{j in J_t} p_j(x) (paper: one matched
    component per true one; here: with a many-to-one map, their uniform mixture, which is
    -mean log p_j(x) when J_t = {j}). NaN when t has no test samples or no learned component.

    Args:
        log_lik: (N, K_learned) log p_j(x) in nats (K_learned = 1 for a method without a mixture).
        true_z: (N,) true components.
        mapping: (K_learned,) learned -> true.
        num_components: K_true.
    """
    nll = np.full(num_components, np.nan)
    for t, group in enumerate(learned_groups(mapping, num_components)):
        group = group[group < log_lik.shape[1]]
        mask = true_z == t
        if mask.any() and group.size:
            rows = log_lik[mask]
            values = rows[:, group[0]] if group.size == 1 else logsumexp(rows[:, group], axis=1) - np.log(group.size)
            nll[t] = -values.mean()
    return nll
