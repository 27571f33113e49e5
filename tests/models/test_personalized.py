"""Personalised mixture prediction against hand computations."""

import math

import pytest
import torch

from fedgmi.models import ComponentVAE
from fedgmi.models.component_classifiers import ComponentClassifiers
from fedgmi.models.heads import CNNClassifier, MLPClassifier
from fedgmi.models.personalized import PersonalizedMixture, mixture_predict


def test_two_component_mixture_prediction_by_hand():
    # one sample; pi = (0.25, 0.75); p_1(x) = 0.02, p_2(x) = 0.01; three classes
    pi = torch.tensor([0.25, 0.75])
    px = torch.tensor([[0.02, 0.01]])
    py = torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]])
    post = pi * px[0] / (pi * px[0]).sum()  # (0.4, 0.6)
    expected = post[0] * py[0, 0] + post[1] * py[0, 1]
    got = mixture_predict(pi.log(), px.log(), py.log())
    torch.testing.assert_close(got[0], expected)
    assert post.tolist() == pytest.approx([0.4, 0.6])
    assert got[0].tolist() == pytest.approx([0.34, 0.14, 0.52])


def test_a_certain_posterior_gives_that_components_prediction():
    py = torch.softmax(torch.randn(4, 2, 5), dim=-1)
    log_px = torch.tensor([[0.0, -200.0]] * 4)
    torch.testing.assert_close(mixture_predict(torch.zeros(2), log_px, py.log()), py[:, 0])


def test_personalized_mixture_module_returns_probabilities_of_the_right_shape():
    torch.manual_seed(0)
    shape = (1, 8, 8)
    vaes = [ComponentVAE(shape, hidden_dims=(16,), latent_dim=2) for _ in range(2)]
    classifiers = ComponentClassifiers([MLPClassifier(shape, 10, (16,)) for _ in range(2)])
    model = PersonalizedMixture(vaes, classifiers, torch.tensor([0.3, 0.7]), estimator="elbo", num_samples=1)
    x = torch.rand(5, 64)
    probs = model.predict(x)
    assert probs.shape == (5, 10)
    torch.testing.assert_close(probs.sum(1), torch.ones(5))
    assert model.predict_step((x, torch.zeros(5))).shape == (5, 10)


def test_cnn_head_shapes_and_bad_image_shape():
    head = CNNClassifier((1, 28, 28), 10)
    assert head(torch.rand(3, 784)).shape == (3, 10)
    assert head(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    with pytest.raises(Exception, match="12"):
        CNNClassifier((1, 8, 8), 10)
    assert math.isfinite(head(torch.rand(1, 784)).sum().item())
