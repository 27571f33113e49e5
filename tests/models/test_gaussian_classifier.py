"""pFedGM's Gaussian head: Kalman fusion against the conjugate-Gaussian posterior, the classifier
against an independent Bayes rule (torch.distributions), the class-prior smoothing and the
between-client variance estimate."""

import torch
from torch.distributions import Independent, Normal

from fedgmi.federated.class_statistics import ClassStatistics
from fedgmi.models.gaussian_classifier import (
    between_client_variance,
    gaussian_class_log_probs,
    kalman_fusion,
    smoothed_log_prior,
)


def test_kalman_fusion_is_the_conjugate_gaussian_posterior_of_the_mean():
    gen = torch.Generator().manual_seed(0)
    m0, v0 = torch.randn(3, 4, generator=gen), torch.rand(3, 4, generator=gen) + 0.1
    xbar, s2 = torch.randn(3, 4, generator=gen), torch.rand(3, 4, generator=gen) + 0.1
    n = torch.tensor([1.0, 7.0, 30.0])
    mean, var = kalman_fusion(m0, v0, xbar, s2, n)
    precision = 1 / v0 + n[:, None] / s2  # prior precision + data precision
    torch.testing.assert_close(var, 1 / precision)
    torch.testing.assert_close(mean, (m0 / v0 + n[:, None] * xbar / s2) / precision)


def test_kalman_fusion_stays_at_the_prior_with_few_samples_and_reaches_the_client_with_many():
    m0, xbar = torch.zeros(2, 3), torch.ones(2, 3)
    v0, s2 = torch.full((3,), 0.01), torch.full((3,), 4.0)  # a confident prior, noisy samples
    none, _ = kalman_fusion(m0, v0, xbar, s2, torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(none, m0)  # no samples: exactly the prior
    few, few_var = kalman_fusion(m0, v0, xbar, s2, torch.tensor([1.0, 2.0]))
    assert float(few.max()) < 0.01 and torch.allclose(few_var, v0.expand(2, 3), rtol=0.01)
    many, many_var = kalman_fusion(m0, v0, xbar, s2, torch.tensor([1e6, 1e7]))
    assert float((many - xbar).abs().max()) < 1e-3 and float(many_var.max()) < 1e-5


def test_gaussian_classifier_equals_the_bayes_rule_on_known_gaussians():
    gen = torch.Generator().manual_seed(1)
    means = torch.tensor([[0.0, 0.0], [2.0, 0.5], [-1.0, 2.0]])
    variances = torch.tensor([[1.0, 0.5], [0.3, 2.0], [1.5, 1.0]])
    prior = torch.tensor([0.5, 0.3, 0.2])
    y = torch.multinomial(prior, 2000, replacement=True, generator=gen)
    z = means[y] + variances[y].sqrt() * torch.randn(2000, 2, generator=gen)
    classes = Independent(Normal(means, variances.sqrt()), 1)
    joint = classes.log_prob(z[:, None, :]) + prior.log()  # (N, Y), independent of the module
    exact = joint - joint.logsumexp(1, keepdim=True)
    ours = gaussian_class_log_probs(z, means, variances, prior.log())
    torch.testing.assert_close(ours, exact, atol=1e-5, rtol=1e-5)
    assert torch.equal(ours.argmax(1), exact.argmax(1))
    assert float((ours.argmax(1) == y).float().mean()) > 0.8  # the Bayes rule separates them
    shared = gaussian_class_log_probs(z, means, variances[0], prior.log())  # (d,) broadcasts
    joint = Independent(Normal(means, variances[0].sqrt()), 1).log_prob(z[:, None, :]) + prior.log()
    torch.testing.assert_close(shared, joint - joint.logsumexp(1, keepdim=True), atol=1e-5, rtol=1e-5)


def test_smoothed_prior_keeps_unseen_classes_possible_and_tends_to_the_reference():
    counts, ref = torch.tensor([8.0, 2.0, 0.0, 0.0]), torch.full((4,), 0.25)
    own = smoothed_log_prior(counts, ref, 0.0)
    torch.testing.assert_close(own.exp(), counts / 10)
    smooth = smoothed_log_prior(counts, ref, 2.0)
    torch.testing.assert_close(smooth.exp(), torch.tensor([8.5, 2.5, 0.5, 0.5]) / 12)
    torch.testing.assert_close(smoothed_log_prior(counts, ref, 1e9).exp(), ref)


def clients_of(tau2: float, sigma2: float, clients: int, gen: torch.Generator) -> list[ClassStatistics]:
    """Statistics of clients whose class-0 mean is N(0, tau2) and samples N(mean, sigma2); class 1
    is held by client 0 only."""
    parts = []
    for p in range(clients):
        n = int(torch.randint(5, 30, (1,), generator=gen))
        mean = tau2 ** 0.5 * torch.randn(3, generator=gen)
        z = mean + sigma2 ** 0.5 * torch.randn(n, 3, generator=gen)
        y = torch.zeros(n, dtype=torch.long)
        if p == 0:
            y[:2] = 1
        parts.append(ClassStatistics.of(z, y, 2))
    return parts


def estimate(parts: list[ClassStatistics]) -> tuple[torch.Tensor, torch.Tensor]:
    return between_client_variance(*(torch.stack([getattr(p, k) for p in parts])
                                     for k in ("counts", "means", "variances")))


def test_between_client_variance_recovers_the_spread_of_client_means_net_of_sampling_noise():
    gen = torch.Generator().manual_seed(2)
    tau2, ok = estimate(clients_of(0.5, 4.0, 600, gen))
    assert ok.tolist() == [True, False] and torch.equal(tau2[1], torch.zeros(3))  # one holder: not estimable
    torch.testing.assert_close(tau2[0], torch.full((3,), 0.5), rtol=0.2, atol=0.0)
    same, _ = estimate(clients_of(0.0, 4.0, 600, gen))  # the raw spread of the means is ~4/17: removed
    assert float(same[0].max()) < 0.05
