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
from fedgmi.federated.clients import NodeClient, Payload, client_pool
from fedgmi.federated.messages import derive_seed
from fedgmi.federated.strategy import EvaluationHooks, Strategy
from fedgmi.metrics import (
    AssignmentAccuracy,
    ComponentMatching,
    NormalizedMutualInfo,
    aggregate_proportions,
    component_accuracy_extremes,
    learned_groups,
    learned_order,
    nats_to_bits_per_dim,
    proportion_errors,
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
        estimated_proportions: (C, K_learned) estimated pi of every client, columns by learned component
            (a NaN row for a client a deployment could not reach).
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


#: The seed stream of the evaluation's latent noise: client c draws from
#: ``derive_seed(seed, EVAL_STREAM, c)`` (its own generator, so that it computes the same on any node).
EVAL_STREAM = 2**32 - 1  # above every round index (rounds <= 1e6)


def _settings(config: EvalConfig, seed: int) -> Payload:
    """The evaluation settings every client receives (tensors: the wire carries tensors)."""
    return {"estimator": torch.tensor(ESTIMATORS.index(config.estimator)), "num_samples": torch.tensor(config.num_samples),
            "proportion_samples": torch.tensor(config.proportion_samples or 0),
            "proportion_iters": torch.tensor(config.proportion_iters), "seed": torch.tensor(int(seed))}


def _config_of(request: Payload) -> EvalConfig:
    return EvalConfig(ESTIMATORS[int(request["estimator"])], int(request["num_samples"]),
                      int(request["proportion_samples"]) or None, int(request["proportion_iters"]))


def _counts(true: torch.Tensor, pred: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(rows, cols) int64 counts of (true, pred) pairs."""
    return torch.bincount(true.long() * cols + pred.long(), minlength=rows * cols).view(rows, cols)


@torch.no_grad()
def client_evaluate(strategy: Strategy, client: NodeClient, request: Payload, scratch: dict) -> Payload:
    """The client's half of the evaluation (step ``"evaluate"``): its proportions re-estimated on
    its training part, then its test part scored (see the module docstring), with its own
    generator (:data:`EVAL_STREAM`).

    Args:
        request: The evaluation settings (estimator, samples, iterations, seed) and ``seen`` (1 for a training client).
        scratch: Kept on the client for :func:`client_evaluate_matched`.

    Returns:
        ``pi`` (K,) float32 its proportions, ``accuracy`` its personalised test accuracy (float32,
        fraction correct) and ``num_test``; where the client has ground truth, also the counts
        the server sums: ``confusion`` (K_true, K) of (true, x-only assigned) components (and
        ``confusion_label_informed``), ``overlap`` (K_true, K) outer(true pi, pi) (float64; only
        when K != K_true, where the many-to-one map needs it),
        ``component_correct`` (K_true, K) correct predictions of each component's head by true
        component, ``personal_correct`` and ``count`` (K_true,) by true component.
    """
    config, seen, cid = _config_of(request), bool(request["seen"]), client.client_id
    seed = derive_seed(int(request["seed"]), EVAL_STREAM, cid)
    gen = torch.Generator(strategy.fabric.device).manual_seed(seed)
    out = _client_outputs(strategy, client.data, seen, config, gen)
    reply = {"pi": out["pi"].float(), "accuracy": out["personal_correct"].float().mean(),
             "num_test": torch.tensor(len(out["personal_correct"]))}
    scratch.clear()
    if client.truth is None:
        return reply
    z, k_true, k = client.truth.z_test.cpu(), client.truth.num_components, out["pi"].numel()
    reply["confusion"] = _counts(z, out["assigned"], k_true, k)
    if "assigned_label_informed" in out:
        reply["confusion_label_informed"] = _counts(z, out["assigned_label_informed"], k_true, k)
    if k != k_true:  # only the many-to-one map reads it; one-to-one, the server never learns the true pi
        reply["overlap"] = torch.outer(client.truth.proportions.double().cpu(), out["pi"].double())
    one_hot = torch.nn.functional.one_hot(z, k_true).T.long()  # (K_true, n)
    reply["component_correct"] = one_hot @ out["component_correct"].long()  # (K_true, K)
    reply["personal_correct"] = one_hot @ out["personal_correct"].long()  # (K_true,)
    reply["count"] = one_hot.sum(1)
    scratch.update(log_px=out["log_px"], pi=out["pi"])
    return reply


@torch.no_grad()
def client_evaluate_matched(strategy: Strategy, client: NodeClient, request: Payload, scratch: dict) -> Payload:
    """The client's second half (step ``"evaluate.matched"``), given the server's map of learned
    to true components (``mapping``, (K,)): ``tv``, its proportions' total-variation error
    (:func:`~fedgmi.metrics.proportion_errors`), when ``tv`` is asked; ``nll_sum`` and
    ``nll_count`` (K_true,), the test NLL in nats of its samples of each true component under the
    learned ones mapped to it (summed; their uniform mixture where several are), when ``nll`` is asked. Empty
    for a client without ground truth. Clears the client's scratch."""
    if client.truth is None or "log_px" not in scratch:
        return {}
    mapping, k_true, reply = request["mapping"].cpu().numpy(), client.truth.num_components, {}
    if bool(request["tv"]):
        tv, _, _ = proportion_errors(scratch["pi"].double().numpy()[None], client.truth.proportions.double().numpy()[None],
                                     mapping)
        reply["tv"] = torch.tensor(float(tv[0]), dtype=torch.float64)
    if bool(request["nll"]):
        z = client.truth.z_test.cpu().numpy()
        total, count = _matched_nll(scratch["log_px"].numpy(), z, mapping, k_true)
        reply["nll_sum"], reply["nll_count"] = torch.from_numpy(total), torch.from_numpy(count)
    scratch.clear()  # the evaluation is over
    return reply


#: The evaluation's client steps (:func:`fedgmi.federated.clients.run_client_step`).
CLIENT_STEPS = {"evaluate": client_evaluate, "evaluate.matched": client_evaluate_matched}


def _summed(replies: dict[int, Payload], ids: list[int], key: str) -> np.ndarray:
    return torch.stack([replies[c][key] for c in ids]).sum(0).cpu().numpy()


@torch.no_grad()
def evaluate(strategy: Strategy, clients, config: EvalConfig, seed: int = 0,
             unseen: Collection[int] = ()) -> Evaluation:
    """Score assignments, proportions, personalised accuracy and per-component test NLL: two
    client steps (:func:`client_evaluate`, then :func:`client_evaluate_matched` with the map the
    server finds on the summed counts); the server only sums what the clients report.

    Args:
        strategy: A trained strategy.
        clients: The clients: a :class:`~fedgmi.federated.clients.ClientPool`, or the
            :class:`~fedgmi.data.Scenario` (clients and ground truth, in process).
        config: Estimator settings.
        seed: Seed of the latent noise of the estimates (client c's: :data:`EVAL_STREAM`).
        unseen: Ids of clients that never trained.

    Returns:
        An :class:`Evaluation`; its metric keys are listed in docs/guide/outputs.md. The
        ground-truth scores are NaN when the clients hold no ground truth. Clients a
        deployment cannot reach (their node gone) are left out of every score and counted in
        ``clients_unevaluated``; their rows of the tables are then missing.

    Raises:
        ConfigError: ``generalization`` asked of clients that are not all in this process.
        RuntimeError: no client could be reached.
    """
    pool = client_pool(clients, strategy)
    scenario = getattr(pool, "scenario", None)
    if scenario is not None:
        attach_truth(strategy, scenario)
    everyone, unseen = pool.client_ids, {int(c) for c in unseen}
    first = pool.call("evaluate", {c: {"seen": torch.tensor(c not in unseen)} for c in everyone},
                      _settings(config, seed), partial=True)
    ids = _reached(everyone, first)
    seen_ids = [c for c in ids if c not in unseen]
    num_learned = int(first[ids[0]]["pi"].numel())
    est = np.full((len(everyone), num_learned), np.nan)  # a client not reached keeps a NaN row
    for row, c in enumerate(everyone):
        if c in first:
            est[row] = first[c]["pi"].double().cpu().numpy()
    truth = all("confusion" in first[c] for c in ids)
    k_true = int(first[ids[0]]["count"].numel()) if truth else num_learned
    mixture = strategy.models_mixture and truth
    mapping = _mapping(first, seen_ids, num_learned) if mixture else np.arange(k_true)
    second = pool.call("evaluate.matched", {c: {"nll": torch.tensor(c not in unseen)} for c in ids},
                       {"mapping": torch.as_tensor(mapping), "tv": torch.tensor(mixture)}, partial=True) if truth else {}
    if truth and len(second) < len(ids):  # a node went between the two steps: score who answered both
        ids = _reached(ids, second)
        seen_ids = [c for c in ids if c not in unseen]
    metrics = _metrics(strategy, first, second, seen_ids, mapping, truth, k_true, num_learned)
    columns = num_learned if strategy.models_mixture else k_true  # no mixture: K_true columns, NaN past the first
    table, client_model, nll = _tables(first, second, seen_ids, k_true, columns, truth)
    if not strategy.pixel_density:
        nll = np.full_like(nll, np.nan)
    metrics["test_nll"] = _nanmean(nll)
    metrics["clients_unevaluated"] = len(everyone) - len(ids)
    shape = scenario.image_shape if scenario is not None else strategy.spec.image_shape
    metrics["test_nll_bits_per_dim"] = nats_to_bits_per_dim(metrics["test_nll"], int(np.prod(shape)))
    metrics["component_accuracy_diag_min"], metrics["component_accuracy_offdiag_max"] = \
        component_accuracy_extremes(table, mapping) if truth else (float("nan"), float("nan"))
    if config.generalization:
        if scenario is None:
            raise ConfigError("evaluation.generalization = true needs every client's test data in one process "
                              "(a simulation); allowed here: false")
        est_pi = {c: first[c]["pi"] for c in seen_ids}
        gen = torch.Generator(strategy.fabric.device).manual_seed(seed)
        gen_acc = generalization_accuracy(strategy, scenario, config, est_pi, gen)
        metrics["generalization_accuracy_mean"] = float(gen_acc.mean())
        metrics["generalization_accuracy_p10"] = float(np.percentile(gen_acc, 10))
    if unseen & set(ids):
        ids_unseen = sorted(unseen & set(ids))
        metrics["unseen_client_accuracy_mean"] = float(np.mean([first[c]["accuracy"].item() for c in ids_unseen]))
        metrics["unseen_proportion_error_tv"] = (float(np.mean([second[c]["tv"].item() for c in ids_unseen]))
                                                 if mixture else float("nan"))
    if not strategy.models_mixture:  # FedAvg, Local: no mixture, so no estimated proportions
        est = np.full((len(everyone), k_true), np.nan)
    return Evaluation(metrics, mapping, est, table, client_model, nll)


def _reached(ids: list[int], replies: dict[int, Payload]) -> list[int]:
    """The clients of ``ids`` that replied (a deployment's gone nodes leave theirs out).

    Raises:
        RuntimeError: none replied (one line).
    """
    reached = [c for c in ids if c in replies]
    if not reached:
        raise RuntimeError(f"evaluation: none of the {len(ids)} clients could be reached (their nodes are gone)")
    return reached


def _merged(metric, states: list[dict[str, torch.Tensor]]):
    """``metric`` with the clients' metric states merged in (torchmetrics' ``merge_state``: each
    client's state is one update; a state it does not report starts at its default)."""
    for state in states:
        metric.merge_state({name: state.get(name, default) for name, default in metric._defaults.items()})
        metric._update_count += 1  # torchmetrics counts updates to warn of a compute before any
    return metric


def _mapping(first: dict[int, Payload], seen_ids: list[int], num_learned: int) -> np.ndarray:
    """The learned -> true map from the training clients' summed confusion counts and overlap."""
    k_true = first[seen_ids[0]]["confusion"].shape[0]
    states = [{"confusion": first[c]["confusion"].cpu(),
               **({"overlap": first[c]["overlap"].cpu(), "proportion_rows": torch.tensor(1)}
                  if "overlap" in first[c] else {})} for c in seen_ids]
    return _merged(ComponentMatching(k_true, num_learned), states).compute().reshape(-1).numpy()


def _metrics(strategy: Strategy, first, second, seen_ids, mapping, truth: bool, k_true: int,
             num_learned: int) -> dict[str, float]:
    """The scalar metrics from the clients' replies (ground-truth scores NaN without truth)."""
    nan = float("nan")
    per_client_acc = np.array([first[c]["accuracy"].item() for c in seen_ids])
    metrics = {"assignment_accuracy": nan, "nmi": nan, "proportion_error_tv": nan, "proportion_error_max": nan,
               "num_components_learned": float(num_learned), "client_accuracy_mean": float(per_client_acc.mean()),
               "client_accuracy_p10": float(np.percentile(per_client_acc, 10))}
    if not (truth and strategy.models_mixture):
        return metrics
    confusion = [{"confusion": first[c]["confusion"].cpu()} for c in seen_ids]
    accuracy = _merged(AssignmentAccuracy(k_true, num_learned, mapping=mapping), confusion)
    nmi = _merged(NormalizedMutualInfo(k_true, num_learned), confusion)
    tv = np.array([second[c]["tv"].item() for c in seen_ids])
    metrics.update(assignment_accuracy=accuracy.compute().item(), nmi=nmi.compute().item(),
                   proportion_error_tv=float(tv.sum() / len(tv)), proportion_error_max=float(tv.max()))
    if _label_informed(strategy):
        informed = _merged(AssignmentAccuracy(k_true, num_learned, mapping=mapping),
                           [{"confusion": first[c]["confusion_label_informed"].cpu()} for c in seen_ids])
        metrics["assignment_accuracy_label_informed"] = informed.compute().item()
    return metrics


def _tables(first, second, seen_ids, k_true: int, num_learned: int,
            truth: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(K_true, K_learned) head accuracy per (true distribution, learned component), (K_true,)
    client-model accuracy per true distribution and (K_true,) matched test NLL (nats), from the
    training clients' summed counts (NaN where a distribution has no test samples, and without
    ground truth)."""
    table, client_model, nll = np.full((k_true, num_learned), np.nan), np.full(k_true, np.nan), np.full(k_true, np.nan)
    if not truth:
        return table, client_model, nll
    count = _summed(first, seen_ids, "count")
    correct, personal = _summed(first, seen_ids, "component_correct"), _summed(first, seen_ids, "personal_correct")
    present = count > 0
    table[present, :correct.shape[1]] = correct[present] / count[present, None]
    client_model[present] = personal[present] / count[present]
    if all("nll_sum" in second[c] for c in seen_ids):
        total, n = _summed(second, seen_ids, "nll_sum"), _summed(second, seen_ids, "nll_count")
        nll[n > 0] = total[n > 0] / n[n > 0]
    return table, client_model, nll


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


def _label_informed(strategy: Strategy) -> bool:
    """Whether ``assignment_accuracy_label_informed`` is reported: a mixture whose E-step
    evidence uses labels (FedAvg and Local have no E-step)."""
    return strategy.models_mixture and strategy.evidence_uses_labels


def _nanmean(values: np.ndarray) -> float:
    """Mean over the finite entries; NaN (no warning) when there are none."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _matched_nll(log_lik: np.ndarray, true_z: np.ndarray, mapping: np.ndarray,
                num_components: int) -> tuple[np.ndarray, np.ndarray]:
    """Per true component t, the summed NLL in nats of its test samples under the learned
    components J_t mapped to t, -sum log (1/|J_t|) sum_{j in J_t} p_j(x) (paper: one matched
    component per true one; here: with a many-to-one map, their uniform mixture, which is
    -log p_j(x) when J_t = {j}), and their count (0 when t has no samples or no learned
    component). The server divides the sums over the clients by the counts.

    Args:
        log_lik: (N, K_learned) log p_j(x) in nats (K_learned = 1 for a method without a mixture).
        true_z: (N,) true components.
        mapping: (K_learned,) learned -> true.
        num_components: K_true.

    Returns:
        ((K_true,) float64 sums, (K_true,) int64 counts).
    """
    total, count = np.zeros(num_components), np.zeros(num_components, dtype=np.int64)
    for t, group in enumerate(learned_groups(mapping, num_components)):
        group = group[group < log_lik.shape[1]]
        mask = true_z == t
        if mask.any() and group.size:
            rows = log_lik[mask].astype(np.float64)
            values = rows[:, group[0]] if group.size == 1 else logsumexp(rows[:, group], axis=1) - np.log(group.size)
            total[t], count[t] = -values.sum(), mask.sum()
    return total, count
