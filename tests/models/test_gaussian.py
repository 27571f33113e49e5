"""Gaussian densities of the shared feature space against scipy, and the projection."""

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from fedgmi.errors import ConfigError
from fedgmi.models.gaussian import gaussian_log_density, moments_to_gaussian, random_projection


def test_log_density_matches_scipy():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(5, 3))
    means = rng.normal(size=(2, 3))
    a = rng.normal(size=(2, 3, 3))
    covs = a @ a.transpose(0, 2, 1) + np.eye(3)
    got = gaussian_log_density(torch.tensor(f), torch.tensor(means), torch.tensor(covs))
    expected = np.stack([multivariate_normal(means[k], covs[k]).logpdf(f) for k in range(2)], axis=1)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


def test_moments_give_the_covariance_and_the_projection_is_seeded():
    mean, second = torch.tensor([1.0, 2.0]), torch.tensor([[2.0, 2.5], [2.5, 5.0]])
    torch.testing.assert_close(moments_to_gaussian(mean, second, 0.5), torch.tensor([[1.5, 0.5], [0.5, 1.5]]))
    assert torch.equal(random_projection(10, 4, 3), random_projection(10, 4, 3))
    assert not torch.equal(random_projection(10, 4, 3), random_projection(10, 4, 4))
    with pytest.raises(ConfigError):
        random_projection(10, 0, 0)


def test_indefinite_moments_become_a_positive_definite_covariance():
    mean = torch.zeros(3)
    second = torch.diag(torch.tensor([1.0, -0.5, 2.0]))  # not a second moment: lossy averaging
    cov = moments_to_gaussian(mean, second, 1e-3)
    assert torch.linalg.cholesky_ex(cov).info.item() == 0
    torch.testing.assert_close(cov, torch.diag(torch.tensor([1.0, 0.0, 2.0])) + 1e-3 * torch.eye(3))
    exact = moments_to_gaussian(mean, torch.eye(3), 1e-3)  # a valid one is left exactly as it was
    assert torch.equal(exact, torch.eye(3) + 1e-3 * torch.eye(3))
