"""Evaluation of an inferred mixture on the clients' test parts (ground truth used here only).

Each client re-estimates its mixture proportions from its own (unlabelled) training part with
the current global components (:func:`~fedgmi.federated.mixture.estimate_proportions`, starting
from its stored proportions), then assigns each test sample to its most probable component,
arg-max_k log pi_ck + log p_k(x). Scores use one Hungarian matching (see
:mod:`fedgmi.metrics.mixture`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedgmi.federated.mixture import estimate_proportions
from fedgmi.federated.strategy import Strategy
from fedgmi.metrics import nats_to_bits_per_dim, score_mixture


@dataclass(frozen=True)
class EvalConfig:
    """How the likelihoods of evaluation are estimated.

    Attributes:
        estimator: "iwae" (default, tighter) or "elbo".
        num_samples: Importance samples of the estimate.
        proportion_iters: EM iterations when a client re-estimates its proportions.
    """

    estimator: str = "iwae"
    num_samples: int = 8
    proportion_iters: int = 20


@dataclass(frozen=True)
class MixtureEvaluation:
    """Result of :func:`evaluate_mixture`.

    Attributes:
        metrics: Flat scalar metrics (stable keys, see README).
        mapping: (K,) learned -> true component matching.
        estimated_proportions: (C, K) estimated pi, columns by learned component.
        test_nll: (K,) per TRUE component, the matched component's NLL in nats.
    """

    metrics: dict[str, float]
    mapping: np.ndarray
    estimated_proportions: np.ndarray
    test_nll: np.ndarray


@torch.no_grad()
def evaluate_mixture(strategy: Strategy, scenario, config: EvalConfig, seed: int = 0) -> MixtureEvaluation:
    """Score assignments, proportions and per-component test NLL.

    Args:
        strategy: A trained strategy.
        scenario: The :class:`~fedgmi.data.Scenario` (clients and ground truth).
        config: Estimator settings.
        seed: Seed of the latent noise of the estimates.

    Returns:
        A :class:`MixtureEvaluation`. Metric keys: ``assignment_accuracy``, ``nmi``,
        ``proportion_error_tv``, ``proportion_error_max``, ``test_nll`` (nats, mean over true
        components) and ``test_nll_bits_per_dim``.
    """
    gen = torch.Generator(strategy.fabric.device).manual_seed(seed)
    est_pi, preds, true_z, test_ll = [], [], [], []
    for client, z_test in zip(scenario.clients, scenario.truth.z_test):
        ll_train = strategy.component_log_likelihood(
            client.x_train, config.estimator, config.num_samples, generator=gen)
        pi, _ = estimate_proportions(
            ll_train, strategy.client_proportions(client.client_id), config.proportion_iters)
        ll_test = strategy.component_log_likelihood(
            client.x_test, config.estimator, config.num_samples, generator=gen)  # (n, K)
        preds.append((pi.log() + ll_test).argmax(1).cpu())
        est_pi.append(pi.cpu())
        true_z.append(z_test.cpu())
        test_ll.append(ll_test.cpu())
    true_z_all, preds_all = torch.cat(true_z).numpy(), torch.cat(preds).numpy()
    est = torch.stack(est_pi).double().numpy()
    scores = score_mixture(true_z_all, preds_all, est, scenario.truth.proportions.numpy())
    nll = _matched_nll(torch.cat(test_ll).numpy(), true_z_all, scores.mapping)
    dims = int(np.prod(scenario.image_shape))
    metrics = {
        "assignment_accuracy": scores.assignment_accuracy,
        "nmi": scores.nmi,
        "proportion_error_tv": scores.proportion_error_tv,
        "proportion_error_max": scores.proportion_error_max,
        "test_nll": float(np.nanmean(nll)),
        "test_nll_bits_per_dim": nats_to_bits_per_dim(float(np.nanmean(nll)), dims),
    }
    return MixtureEvaluation(metrics, scores.mapping, est, nll)


def _matched_nll(log_lik: np.ndarray, true_z: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """(K,) for each true component t, -mean log p_j(x) over its test samples, with j the
    learned component matched to t (NaN when t has no test samples)."""
    learned_of_true = np.argsort(mapping)  # inverse permutation: true t -> learned j
    nll = np.full(len(mapping), np.nan)
    for t, j in enumerate(learned_of_true):
        mask = true_z == t
        if mask.any():
            nll[t] = -log_lik[mask, j].mean()
    return nll
