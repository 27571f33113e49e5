"""Client-side mixture inference: responsibilities and mixture proportions (the E-step).

FedGMI step 2 (DESIGN.md; Hou et al., arXiv 2605.08760): for client c and sample i,

    log r_ik = log pi_ck + log p_k(x_i) - logsumexp_k'(log pi_ck' + log p_k'(x_i)),

and step 3's proportion update pi_ck = mean_i r_ik. Everything is computed in float32 log space.
"""

from __future__ import annotations

import torch

from fedgmi.errors import ConfigError

RESPONSIBILITY_RULES = ("soft", "hard")


def check_rule(rule: str, temperature: float) -> None:
    """Raise ConfigError for an unknown responsibility rule or a non-positive temperature."""
    if rule not in RESPONSIBILITY_RULES:
        raise ConfigError(f"unknown responsibility rule {rule!r}; choose one of: soft, hard")
    if not temperature > 0:
        raise ConfigError(f"temperature = {temperature!r} must be > 0")


def responsibilities(
    log_pi: torch.Tensor,
    log_lik: torch.Tensor,
    rule: str = "soft",
    temperature: float = 1.0,
) -> torch.Tensor:
    """Posterior probability of each component for each sample.

    Soft rule: r_ik = softmax_k(log pi_k + log p_k(x_i) / T), the posterior under a tempered
    (power) likelihood p_k(x)^(1/T) (Holmes & Walker, Biometrika 2017). T = 1 is exact Bayes;
    T > 1 lets the client's proportions decide where the components' likelihoods differ by
    little, which counters the over-confidence of likelihood bounds summed over hundreds of
    pixels. Hard rule: the one-hot of the arg-max of log pi_k + log p_k(x_i)/T (classification
    EM).

    Args:
        log_pi: (K,) log mixture proportions of the client.
        log_lik: (N, K) log-likelihood (or a bound on it) of each sample under each component,
            in nats.
        rule: "soft" or "hard".
        temperature: T > 0, the likelihood's temperature.

    Returns:
        (N, K) float32 responsibilities; each row sums to 1.

    Raises:
        ConfigError: unknown rule or temperature <= 0.
    """
    check_rule(rule, temperature)
    logits = log_pi.float().unsqueeze(0) + log_lik.float() / temperature  # (N, K)
    if rule == "hard":
        return torch.nn.functional.one_hot(logits.argmax(1), logits.shape[1]).float()
    return torch.softmax(logits, dim=1)


def estimate_proportions(
    log_lik: torch.Tensor,
    pi: torch.Tensor | None = None,
    iters: int = 10,
    rule: str = "soft",
    temperature: float = 1.0,
    floor: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """EM on the mixture proportions alone, with the component likelihoods held fixed.

    Alternates r = responsibilities(log pi, log_lik) and pi = mean_i r_i (FedGMI steps 2-3),
    ``iters`` times. This is how a client updates its proportions each round and how a new
    client infers its proportions from unlabelled data. Proportions are kept above ``floor``
    (then renormalised) so that a component can come back.

    Args:
        log_lik: (N, K) per-sample component log-likelihoods in nats.
        pi: (K,) starting proportions; uniform when ``None``.
        iters: Number of EM iterations (>= 1).

    Returns:
        ``(pi, r)``: (K,) proportions and the (N, K) responsibilities computed with them.
    """
    num_components = log_lik.shape[1]
    if pi is None:
        pi = torch.full((num_components,), 1.0 / num_components)
    pi = pi.float().to(log_lik.device)
    for _ in range(max(1, iters)):
        r = responsibilities(pi.log(), log_lik, rule, temperature)
        pi = r.mean(0).clamp_min(floor)
        pi = pi / pi.sum()
    return pi, responsibilities(pi.log(), log_lik, rule, temperature)


def label_log_likelihood(class_log_probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, K) log p_k(y_i | x_i) picked from (N, K, Y) class log-probabilities at the (N,)
    labels ``y``."""
    index = y.to(class_log_probs.device).view(-1, 1, 1).expand(-1, class_log_probs.shape[1], 1)  # (N, K, 1)
    return class_log_probs.gather(2, index).squeeze(2)
