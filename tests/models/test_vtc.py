"""The VTC generator of FedVTC: shapes, its KL, and, trained on real digits, samples drawn from
the class Gaussians of the features that a fixed, independently trained classifier recognises."""

import pytest
import torch
import torch.nn.functional as F

from fedgmi.errors import ConfigError
from fedgmi.federated.class_statistics import ClassStatistics
from fedgmi.models.elbo import gaussian_kl_to_standard_normal
from fedgmi.models.features import MLPFeatures
from fedgmi.models.heads import MLPClassifier
from fedgmi.models.vtc import VTCGenerator, gaussian_kl, sample_class_latents, vtc_terms


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 13, 10)])
def test_generator_maps_latents_to_images_of_the_problem_in_unit_range(shape):
    psi = VTCGenerator(shape, feature_dim=6)
    z = torch.randn(4, 6)
    v = psi.latent(z, torch.Generator().manual_seed(0))
    assert v.shape == (4, 6) and not torch.equal(v, z)
    x = psi(v)
    assert x.shape == (4, shape[0] * shape[1] * shape[2]) and bool(((x > 0) & (x < 1)).all())


def test_gaussian_kl_matches_the_standard_normal_case_and_a_direct_formula():
    mq, lq, mp, lp = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(gaussian_kl(mq, lq, torch.zeros(3), torch.zeros(3)),
                               gaussian_kl_to_standard_normal(mq, lq))
    direct = 0.5 * (lp - lq + (lq.exp() + (mq - mp) ** 2) / lp.exp() - 1).sum(-1)
    torch.testing.assert_close(gaussian_kl(mq, lq, mp, lp), direct)
    assert float(gaussian_kl(mq, lq, mq, lq).abs().max()) < 1e-6


def test_bad_sizes_are_refused():
    with pytest.raises(ConfigError, match="VTCGenerator"):
        VTCGenerator((28, 28), 8)
    with pytest.raises(ConfigError, match="init_sigma"):
        VTCGenerator((1, 28, 28), 8, init_sigma=0.0)


def train(module, loss, x, y, epochs, seed, lr=2e-3):
    """Adam on (x, y) in seeded batches of 64; loss(xb, yb, gen) -> scalar."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            loss(x[idx], y[idx], gen).backward()
            opt.step()
    return module


def test_generator_trained_on_digits_draws_samples_a_fixed_classifier_labels_as_their_class(mnist_base):
    torch.manual_seed(0)
    x = mnist_base.images.reshape(len(mnist_base.images), -1)
    y = mnist_base.labels
    judge = MLPClassifier((1, 28, 28), 10)  # fixed classifier, trained on other digits
    train(judge, lambda xb, yb, g: F.cross_entropy(judge(xb), yb), x[2000:5000], y[2000:5000], 3, 1)
    xs, ys = x[:600], y[:600]  # the generator's (and its feature model's) digits
    features = MLPFeatures((1, 28, 28), 32)
    head = torch.nn.Linear(32, 10)
    train(torch.nn.Sequential(features, head), lambda xb, yb, g: F.cross_entropy(head(features(xb)), yb), xs, ys, 5, 2)
    with torch.no_grad():
        stats = ClassStatistics.of(features(xs), ys, 10)
        z = features(xs)
    variances = stats.variances.clamp_min(0.01)
    psi = VTCGenerator((1, 28, 28), 32)

    def vtc_loss(zb_idx, yb, gen):
        rec, kl = vtc_terms(psi, z[zb_idx], xs[zb_idx], stats.means[yb], variances[yb].log(), gen)
        return (rec + kl).mean()

    idx = torch.arange(len(xs))
    train(psi, vtc_loss, idx, ys, 25, 3)
    labels = torch.arange(10).repeat_interleave(50)
    with torch.no_grad():
        samples = psi(sample_class_latents(stats.means, variances, labels, torch.Generator().manual_seed(4)))
        judged = judge(samples).argmax(-1)
        real = (judge(x[6000:7000]).argmax(-1) == y[6000:7000]).float().mean()
    accuracy = float((judged == labels).float().mean())
    print(f"judge accuracy on real digits {float(real):.3f}, on generated samples {accuracy:.3f}")
    assert float(real) > 0.85
    assert accuracy > 0.8  # chance: 0.1; measured 0.98 (2.4 s, one thread)
