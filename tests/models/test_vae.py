"""Tests of the ComponentVAE density estimator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedgmi.errors import ConfigError
from fedgmi.models import ComponentVAE, mlp
from fedgmi.models.elbo import (
    bernoulli_log_likelihood,
    diagonal_gaussian_log_density,
    standard_normal_log_density,
)

LOG_2PI = math.log(2.0 * math.pi)


def _sigmoid(a: float) -> float:
    return 1.0 / (1.0 + math.exp(-a))


# Hand-set tiny model: D = 2 pixels, L = 1 latent, no hidden layer.
W_ENC = [[0.5, -0.3], [0.2, 0.4]]  # rows: mu, logvar
B_ENC = [0.1, -0.6]
W_DEC = [1.5, -0.7]  # (D,) weights of the single latent
B_DEC = [0.2, 0.3]
X_TINY = [[1.0, 0.0], [0.25, 0.75], [0.0, 1.0]]


def _tiny_model() -> ComponentVAE:
    model = ComponentVAE((2,), hidden_dims=(), latent_dim=1)
    enc, dec = model.encoder[0], model.decoder[0]
    assert isinstance(enc, nn.Linear) and isinstance(dec, nn.Linear)
    with torch.no_grad():
        enc.weight.copy_(torch.tensor(W_ENC))
        enc.bias.copy_(torch.tensor(B_ENC))
        dec.weight.copy_(torch.tensor(W_DEC).reshape(2, 1))
        dec.bias.copy_(torch.tensor(B_DEC))
    return model


def _hand_posterior(x: list[float]) -> tuple[float, float]:
    mu = W_ENC[0][0] * x[0] + W_ENC[0][1] * x[1] + B_ENC[0]
    logvar = W_ENC[1][0] * x[0] + W_ENC[1][1] * x[1] + B_ENC[1]
    return mu, logvar


def _hand_log_px_given_z(x: list[float], z: float) -> float:
    total = 0.0
    for d in range(2):
        p = _sigmoid(W_DEC[d] * z + B_DEC[d])
        total += x[d] * math.log(p) + (1.0 - x[d]) * math.log(1.0 - p)
    return total


def _random_model(seed: int = 0, **kwargs) -> ComponentVAE:
    torch.manual_seed(seed)
    kwargs.setdefault("hidden_dims", (32,))
    kwargs.setdefault("latent_dim", 4)
    return ComponentVAE((1, 8, 8), **kwargs)


def _binary_batch(batch: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 1, 8, 8, generator=g) < 0.3).float()


# ---------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("flat", [True, False])
def test_shapes(flat: bool) -> None:
    model = _random_model()
    x = _binary_batch(5)
    if flat:
        x = x.reshape(5, 64)
    mu, logvar = model.encode(x)
    assert mu.shape == (5, 4) and logvar.shape == (5, 4)
    assert model.decode(mu).shape == (5, 64)
    assert model.decode(torch.zeros(3, 5, 4)).shape == (3, 5, 64)
    assert model.elbo(x).shape == (5,)
    assert model.elbo(x, num_samples=3).shape == (5,)
    assert model.iwae(x, num_samples=7).shape == (5,)
    assert model.log_likelihood(x).shape == (5,)
    assert model.log_likelihood(x, estimator="iwae", num_samples=2).shape == (5,)
    rec = model.reconstruct(x)
    assert rec.shape == (5, 1, 8, 8)
    assert ((rec >= 0) & (rec <= 1)).all()
    samples = model.sample(6)
    assert samples.shape == (6, 1, 8, 8)
    assert ((samples >= 0) & (samples <= 1)).all()
    assert model.sample(0).shape == (0, 1, 8, 8)


def test_mlp_helper_and_architecture() -> None:
    net = mlp((10, 7, 5, 3))
    kinds = [type(m) for m in net]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    model = ComponentVAE((1, 4, 4), hidden_dims=(12, 6), latent_dim=3)
    enc_widths = [m.out_features for m in model.encoder if isinstance(m, nn.Linear)]
    dec_widths = [m.out_features for m in model.decoder if isinstance(m, nn.Linear)]
    assert enc_widths == [12, 6, 6]  # last: 2 * latent
    assert dec_widths == [6, 12, 16]
    assert model.hparams["latent_dim"] == 3
    assert model.hparams["image_shape"] == (1, 4, 4)


def test_image_shape_is_first_positional_and_subclass_hooks() -> None:
    class TanhEncoderVAE(ComponentVAE):
        def build_encoder(self) -> nn.Module:
            return nn.Sequential(nn.Linear(self.data_dim, 2 * self.latent_dim), nn.Tanh())

    model = TanhEncoderVAE((1, 3, 3))
    assert model.data_dim == 9 and model.latent_dim == 20
    mu, logvar = model.encode(torch.rand(4, 9))
    assert mu.abs().max() <= 1 and logvar.abs().max() <= 1
    assert model.elbo(torch.rand(4, 1, 3, 3)).shape == (4,)


# ---------------------------------------------------------------------------------- ELBO
@pytest.mark.parametrize("num_samples", [1, 3])
def test_elbo_matches_hand_computation(num_samples: int) -> None:
    model = _tiny_model()
    torch.manual_seed(123)
    eps = torch.randn(num_samples, 3, 1).tolist()  # the (S, B, L) draw elbo() makes
    torch.manual_seed(123)
    got = model.elbo(torch.tensor(X_TINY), num_samples=num_samples)

    expected = []
    for b, x in enumerate(X_TINY):
        mu, logvar = _hand_posterior(x)
        sigma = math.exp(0.5 * logvar)
        rec = sum(_hand_log_px_given_z(x, mu + sigma * eps[s][b][0]) for s in range(num_samples))
        rec /= num_samples
        kl = 0.5 * (math.exp(logvar) + mu * mu - 1.0 - logvar)
        expected.append(rec - kl)
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=0, atol=1e-5)


def test_iwae_matches_hand_computation() -> None:
    model = _tiny_model()
    num_samples = 4
    torch.manual_seed(7)
    eps = torch.randn(num_samples, 3, 1).tolist()
    torch.manual_seed(7)
    got = model.iwae(torch.tensor(X_TINY), num_samples=num_samples, chunk_size=3)

    expected = []
    for b, x in enumerate(X_TINY):
        mu, logvar = _hand_posterior(x)
        sigma = math.exp(0.5 * logvar)
        weights = []
        for s in range(num_samples):
            z = mu + sigma * eps[s][b][0]
            log_pz = -0.5 * (LOG_2PI + z * z)
            log_qz = -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 / math.exp(logvar))
            weights.append(math.exp(_hand_log_px_given_z(x, z) + log_pz - log_qz))
        expected.append(math.log(sum(weights) / num_samples))
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=0, atol=1e-5)


def test_iwae_single_sample_fixed_seed_identity() -> None:
    """IWAE with S = 1 is log p(x|z) + log p(z) - log q(z|x) for the same z."""
    model = _random_model()
    x = _binary_batch(8)
    g = torch.Generator().manual_seed(3)
    got = model.iwae(x, num_samples=1, generator=g)
    mu, logvar = model.encode(x)
    eps = torch.randn(1, *mu.shape, generator=torch.Generator().manual_seed(3))
    z = mu + torch.exp(0.5 * logvar) * eps  # (1, B, L)
    log_w = (
        bernoulli_log_likelihood(model.decode(z), x.reshape(8, 64))
        + standard_normal_log_density(z)
        - diagonal_gaussian_log_density(z, mu, logvar)
    )
    torch.testing.assert_close(got, log_w[0])


def test_iwae_single_sample_equals_elbo_in_expectation() -> None:
    model = _tiny_model()
    reps = 20_000
    x = torch.tensor(X_TINY).repeat(reps, 1)  # (3 * reps, D)
    with torch.no_grad():
        iwae1 = model.iwae(x, num_samples=1, generator=torch.Generator().manual_seed(0))
        elbo = model.elbo(torch.tensor(X_TINY), num_samples=reps, generator=torch.Generator())
    iwae1 = iwae1.reshape(reps, 3)
    se = iwae1.std(dim=0) / math.sqrt(reps)
    assert torch.all((iwae1.mean(dim=0) - elbo).abs() < 5 * se + 1e-3)


def test_iwae_is_tighter_than_elbo_and_improves_with_samples() -> None:
    model = _random_model(seed=1, hidden_dims=(16,), latent_dim=2)
    with torch.no_grad():  # make q(z|x) wide so the bounds differ clearly
        model.encoder[-1].bias[2:] += 1.5
    x = _binary_batch(64, seed=1)
    with torch.no_grad():
        elbo = model.elbo(x, num_samples=256, generator=torch.Generator().manual_seed(0))
        bounds = {
            s: model.iwae(x, num_samples=s, generator=torch.Generator().manual_seed(0)).mean()
            for s in (1, 8, 64, 512)
        }
    assert elbo.mean() < bounds[8] < bounds[64] < bounds[512]
    assert bounds[512] - elbo.mean() > 0.5  # a clear gap, not MC noise


def test_iwae_chunking_does_not_change_result() -> None:
    model = _random_model()
    x = _binary_batch(6)
    a = model.iwae(x, num_samples=20, generator=torch.Generator().manual_seed(5), chunk_size=3)
    b = model.iwae(x, num_samples=20, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)


def test_log_likelihood_dispatch() -> None:
    model = _random_model(estimator="iwae", num_samples=5)
    x = _binary_batch(4)
    got = model.log_likelihood(x, generator=torch.Generator().manual_seed(2))
    want = model.iwae(x, num_samples=5, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(got, want)
    got = model.log_likelihood(x, "elbo", 2, generator=torch.Generator().manual_seed(2))
    want = model.elbo(x, num_samples=2, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(got, want)
    with pytest.raises(ConfigError, match="bogus"):
        model.log_likelihood(x, estimator="bogus")
    with pytest.raises(ConfigError, match="num_samples"):
        model.log_likelihood(x, num_samples=0)


# ---------------------------------------------------------------------------------- weights
def test_weighted_negative_elbo_concentrated_weight() -> None:
    model = _random_model()
    x = _binary_batch(5)
    w = torch.tensor([0.0, 0.0, 2.5, 0.0, 0.0])
    torch.manual_seed(11)
    loss = model.weighted_negative_elbo(x, w)
    torch.manual_seed(11)
    elbo = model.elbo(x)
    torch.testing.assert_close(loss, -elbo[2])
    torch.manual_seed(11)
    torch.testing.assert_close(model.weighted_negative_elbo(x), -elbo.mean())
    torch.manual_seed(11)
    w2 = torch.tensor([1.0, 3.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(model.weighted_negative_elbo(x, w2), -(elbo[0] + 3 * elbo[1]) / 4)


def test_weighted_negative_elbo_zero_weights() -> None:
    model = _random_model()
    x = _binary_batch(4)
    loss = model.weighted_negative_elbo(x, torch.zeros(4))
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    for p in model.parameters():
        assert p.grad is not None and torch.all(p.grad == 0)
    with pytest.raises(ConfigError, match="weights"):
        model.weighted_negative_elbo(x, torch.ones(3))


# ---------------------------------------------------------------------------------- RNG / dtype
def test_generator_determinism_and_no_global_rng_use() -> None:
    model = _random_model()
    x = _binary_batch(4)
    state = torch.get_rng_state()
    a = model.elbo(x, 2, generator=torch.Generator().manual_seed(9))
    b = model.elbo(x, 2, generator=torch.Generator().manual_seed(9))
    s1 = model.sample(3, generator=torch.Generator().manual_seed(9))
    s2 = model.sample(3, generator=torch.Generator().manual_seed(9))
    model.iwae(x, 4, generator=torch.Generator().manual_seed(9))
    assert torch.equal(state, torch.get_rng_state())
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(s1, s2)
    c = model.elbo(x, 2, generator=torch.Generator().manual_seed(10))
    assert not torch.allclose(a, c)


def test_reconstruct_is_deterministic_and_uses_mean() -> None:
    model = _random_model()
    x = _binary_batch(3)
    mu, _ = model.encode(x)
    torch.testing.assert_close(
        model.reconstruct(x), torch.sigmoid(model.decode(mu)).reshape(3, 1, 8, 8)
    )


def test_autocast_bf16_keeps_float32_losses() -> None:
    model = _random_model()
    x = _binary_batch(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        elbo = model.elbo(x, generator=torch.Generator().manual_seed(0))
        iwae = model.iwae(x, 8, generator=torch.Generator().manual_seed(0))
        loss = model.weighted_negative_elbo(x, torch.ones(4))
        samples = model.sample(2)
    assert elbo.dtype == iwae.dtype == loss.dtype == samples.dtype == torch.float32
    assert torch.isfinite(elbo).all() and torch.isfinite(iwae).all()
    loss.backward()
    ref = model.elbo(x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(elbo, ref, atol=1.0, rtol=0.05)


# ---------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs",
    [
        {"latent_dim": 0},
        {"latent_dim": 2.5},
        {"estimator": "exact"},
        {"hidden_dims": (0,)},
        {"hidden_dims": (-3, 4)},
        {"image_shape": ()},
        {"image_shape": (1, 0, 8)},
        {"image_shape": "1x8x8"},
        {"lr": 0.0},
        {"lr": float("nan")},
        {"num_samples": 0},
    ],
)
def test_bad_constructor_args_raise_config_error(kwargs: dict) -> None:
    with pytest.raises(ConfigError) as info:
        ComponentVAE(**kwargs)
    name = next(iter(kwargs))
    assert name in str(info.value) and "\n" not in str(info.value)


def test_bad_input_shape_raises() -> None:
    model = _random_model()
    with pytest.raises(ConfigError, match="input x"):
        model.elbo(torch.rand(4, 63))
    with pytest.raises(ConfigError, match="input x"):
        model.encode(torch.rand(64))
