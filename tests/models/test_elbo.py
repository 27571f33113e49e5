"""Hand-computed checks of the pure ELBO / IWAE helper functions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedgmi.models.elbo import (
    bernoulli_log_likelihood,
    diagonal_gaussian_log_density,
    gaussian_kl_to_standard_normal,
    iwae_bound,
    standard_normal_log_density,
)


def _sigmoid(a: float) -> float:
    return 1.0 / (1.0 + math.exp(-a))


def test_bernoulli_log_likelihood_matches_hand_formula() -> None:
    logits = [[0.3, -1.2, 2.0], [-0.5, 0.0, 4.0]]
    x = [[1.0, 0.0, 0.25], [0.0, 1.0, 1.0]]
    expected = [
        sum(
            xi * math.log(_sigmoid(li)) + (1.0 - xi) * math.log(1.0 - _sigmoid(li))
            for li, xi in zip(row_l, row_x)
        )
        for row_l, row_x in zip(logits, x)
    ]
    got = bernoulli_log_likelihood(torch.tensor(logits), torch.tensor(x))
    assert got.shape == (2,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_bernoulli_log_likelihood_broadcasts_sample_dim() -> None:
    logits = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(0))  # (S, B, D)
    x = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]])  # (B, D)
    got = bernoulli_log_likelihood(logits, x)
    assert got.shape == (3, 2)
    for s in range(3):
        torch.testing.assert_close(got[s], bernoulli_log_likelihood(logits[s], x))


def test_bernoulli_log_likelihood_is_stable_for_large_logits() -> None:
    got = bernoulli_log_likelihood(torch.tensor([[100.0, -100.0]]), torch.tensor([[1.0, 0.0]]))
    assert torch.isfinite(got).all()
    assert got.item() == pytest.approx(0.0, abs=1e-6)
    got = bernoulli_log_likelihood(torch.tensor([[100.0]]), torch.tensor([[0.0]]))
    assert got.item() == pytest.approx(-100.0, rel=1e-6)


def test_gaussian_kl_matches_hand_formula() -> None:
    mu = [[0.5, -1.0], [0.0, 0.0]]
    logvar = [[0.2, -0.7], [0.0, 0.0]]
    # KL(N(m, s^2) || N(0, 1)) = log(1/s) + (s^2 + m^2) / 2 - 1/2 per dimension.
    expected = []
    for row_m, row_lv in zip(mu, logvar):
        total = 0.0
        for m, lv in zip(row_m, row_lv):
            s2 = math.exp(lv)
            total += -0.5 * math.log(s2) + 0.5 * (s2 + m * m) - 0.5
        expected.append(total)
    got = gaussian_kl_to_standard_normal(torch.tensor(mu), torch.tensor(logvar))
    assert got.shape == (2,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-7)
    assert expected[1] == 0.0  # q == p gives zero KL


def test_gaussian_kl_equals_monte_carlo_log_ratio() -> None:
    g = torch.Generator().manual_seed(0)
    mu = torch.tensor([[0.4, -0.3, 1.1]], dtype=torch.float64)
    logvar = torch.tensor([[-0.5, 0.3, 0.0]], dtype=torch.float64)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(200_000, 1, 3, generator=g, dtype=mu.dtype)
    mc = (diagonal_gaussian_log_density(z, mu, logvar) - standard_normal_log_density(z)).mean()
    analytic = gaussian_kl_to_standard_normal(mu, logvar)
    assert mc.item() == pytest.approx(analytic.item(), abs=0.01)


def test_diagonal_gaussian_log_density_matches_hand_formula() -> None:
    z = [[0.3, -0.2], [1.5, 0.0]]
    mu = [[0.0, 0.1], [1.0, -1.0]]
    logvar = [[0.0, 0.5], [-1.0, 0.2]]
    expected = []
    for rz, rm, rlv in zip(z, mu, logvar):
        total = 0.0
        for zi, mi, lvi in zip(rz, rm, rlv):
            var = math.exp(lvi)
            total += math.log(1.0 / math.sqrt(2 * math.pi * var)) - (zi - mi) ** 2 / (2 * var)
        expected.append(total)
    got = diagonal_gaussian_log_density(torch.tensor(z), torch.tensor(mu), torch.tensor(logvar))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    zero = torch.zeros(2, 2)
    torch.testing.assert_close(
        standard_normal_log_density(torch.tensor(z)),
        diagonal_gaussian_log_density(torch.tensor(z), zero, zero),
    )


def test_iwae_bound_matches_numpy_logsumexp() -> None:
    rng = np.random.default_rng(0)
    log_w = rng.normal(loc=-50.0, scale=3.0, size=(7, 4))  # (S, B), far from exp range
    m = log_w.max(axis=0)
    expected = m + np.log(np.exp(log_w - m).sum(axis=0)) - np.log(7)
    got = iwae_bound(torch.from_numpy(log_w))
    assert got.shape == (4,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    # Bounded by the mean (Jensen) and the max of the log weights.
    assert np.all(got.numpy() >= log_w.mean(axis=0))
    assert np.all(got.numpy() <= log_w.max(axis=0))


def test_iwae_bound_single_sample_is_identity() -> None:
    log_w = torch.tensor([[-3.5, 2.0, -1000.0]])  # (S=1, B=3)
    torch.testing.assert_close(iwae_bound(log_w), log_w[0])


def test_iwae_bound_of_equal_weights_is_that_weight() -> None:
    log_w = torch.full((16, 2), -7.25, dtype=torch.float64)
    torch.testing.assert_close(iwae_bound(log_w), log_w[0])


def test_iwae_bound_rejects_empty_sample_dim() -> None:
    with pytest.raises(ValueError):
        iwae_bound(torch.zeros(0, 3))
