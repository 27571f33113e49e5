"""ConvVAE (discretised logistic / Bernoulli) and the CifarCNN classifier body."""

from __future__ import annotations

import math

import pytest
import torch

from fedgmi.errors import ConfigError
from fedgmi.models import CifarCNN, ComponentVAE, ConvVAE
from fedgmi.models.conv_vae import discretized_logistic_log_likelihood
from fedgmi.models.elbo import bernoulli_log_likelihood


def test_discretized_logistic_is_a_distribution_over_256_levels() -> None:
    levels = torch.arange(256, dtype=torch.float64)[:, None] / 255  # every 8-bit value, D = 1
    for mean, log_scale in ((0.3, -2.0), (-0.9, -5.0), (1.0, 0.5), (0.0, -7.0)):
        lp = discretized_logistic_log_likelihood(torch.full((256, 1), mean, dtype=torch.float64),
                                                 torch.full((256, 1), log_scale, dtype=torch.float64), levels)
        assert lp.shape == (256,) and math.isclose(lp.exp().sum().item(), 1.0, rel_tol=1e-4)


def test_discretized_logistic_sums_over_dims() -> None:
    x = torch.rand(3, 5)
    mean, log_scale = torch.randn(3, 5), torch.randn(3, 5)
    total = discretized_logistic_log_likelihood(mean, log_scale, x)
    parts = sum(discretized_logistic_log_likelihood(mean[:, d:d + 1], log_scale[:, d:d + 1], x[:, d:d + 1])
                for d in range(5))
    assert torch.allclose(total, parts)


def test_conv_vae_is_a_component_vae_with_flat_interfaces() -> None:
    torch.manual_seed(0)
    vae = ConvVAE((3, 32, 32), channels=(8, 16), latent_dim=6)
    assert isinstance(vae, ComponentVAE)
    x = torch.randint(0, 256, (4, 3 * 32 * 32)).float() / 255
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (4, 6)
    assert vae.decode(mu).shape == (4, 2 * 3072)  # logistic means then log-scales
    assert vae.elbo(x, num_samples=2).shape == (4,) and vae.iwae(x, 5).shape == (4,)
    assert vae.log_likelihood(x, "iwae", 3).shape == (4,)
    assert vae.sample(3).shape == (3, 3, 32, 32) and vae.reconstruct(x).shape == (4, 3, 32, 32)
    assert vae.sample(2).min() >= 0 and vae.sample(2).max() <= 1


def test_conv_vae_learns_and_reports_sane_bits_per_dim() -> None:
    torch.manual_seed(1)
    vae = ConvVAE((3, 8, 8), channels=(8, 16), latent_dim=4, lr=3e-3)
    x = (torch.rand(32, 3, 8, 8) * 0.2 + 0.4).mul(255).round().div(255).flatten(1)  # low-entropy 8-bit data
    opt = vae.configure_optimizers()
    first = None
    for _ in range(150):
        loss = vae.weighted_negative_elbo(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    bits = loss.item() / (x.shape[1] * math.log(2))
    assert loss.item() < first and 0 < bits < 8  # under the 8 bits/dim of a uniform 8-bit model


def test_bernoulli_conv_vae_matches_bernoulli_likelihood() -> None:
    torch.manual_seed(2)
    vae = ConvVAE((1, 28, 28), channels=(4, 8), latent_dim=3, likelihood="bernoulli")
    x = torch.rand(2, 784)
    z = torch.randn(1, 2, 3)
    assert torch.allclose(vae._log_px_given_z(z, x, None), bernoulli_log_likelihood(vae.decode(z), x))


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"likelihood": "gaussian"}, "likelihood = 'gaussian' is unknown"),
        ({"image_shape": (3, 30, 30)}, "divisible by 4"),
        ({"channels": (8,)}, "two positive ints"),
        ({"latent_dim": 0}, "latent_dim=0"),
    ],
)
def test_conv_vae_bad_arguments(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        ConvVAE(**kwargs)
    assert needle in str(err.value)


def test_cifar_cnn_shapes_and_errors() -> None:
    net = CifarCNN((3, 32, 32), 10, channels=(8, 8, 16))
    assert net(torch.rand(5, 3072)).shape == (5, 10) and net(torch.rand(5, 3, 32, 32)).shape == (5, 10)
    assert CifarCNN((1, 8, 8), 4, channels=(4, 4, 4))(torch.rand(2, 64)).shape == (2, 4)
    with pytest.raises(ConfigError, match="divisible by 8"):
        CifarCNN((3, 28, 28))
    with pytest.raises(ConfigError, match="num_classes"):
        CifarCNN((3, 32, 32), 1)
