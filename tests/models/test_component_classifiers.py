"""FedGMI's K class predictors: a shared body with K heads, or K whole classifiers."""

import torch
import torch.nn.functional as F
from torch import nn

from fedgmi.models.component_classifiers import (
    ComponentClassifiers,
    mixture_of_experts_nll,
    responsibility_weighted_cross_entropy,
)
from fedgmi.models.features import CNNFeatures
from fedgmi.models.heads import MLPClassifier


def test_shared_body_heads_shapes_and_vector_split():
    torch.manual_seed(0)
    body = CNNFeatures((1, 28, 28), feature_dim=16, channels=(4, 8))
    model = ComponentClassifiers([nn.Linear(16, 10) for _ in range(3)], body)
    assert model(torch.rand(5, 784)).shape == (5, 3, 10)
    body_size, head_sizes = model.split_sizes()
    assert body_size == sum(p.numel() for p in body.parameters()) and head_sizes == [170] * 3
    flat = torch.cat([p.reshape(-1) for p in model.parameters()])
    assert flat.numel() == body_size + sum(head_sizes)
    # the vector is the body's parameters, then head 0, 1, 2
    head1 = flat[body_size + 170: body_size + 340]
    torch.testing.assert_close(head1, torch.cat([model.heads[1].weight.reshape(-1), model.heads[1].bias]))
    log_p = model.class_log_probs(torch.rand(4, 784))
    torch.testing.assert_close(log_p.exp().sum(-1), torch.ones(4, 3))


def test_separate_layout_has_no_body_parameters():
    model = ComponentClassifiers([MLPClassifier((1, 8, 8), 10, (16,)) for _ in range(2)])
    assert model.split_sizes()[0] == 0
    x = torch.rand(3, 64)
    torch.testing.assert_close(model(x)[:, 1], model.heads[1](x))


def test_weighted_cross_entropy_with_one_hot_weights_is_that_heads_cross_entropy():
    logits, y = torch.randn(6, 3, 5), torch.randint(0, 5, (6,))
    w = torch.zeros(6, 3)
    w[:, 2] = 1.0
    expected = F.cross_entropy(logits[:, 2], y)
    torch.testing.assert_close(responsibility_weighted_cross_entropy(logits, y, w, 1.0), expected)
    # halving every weight and the normaliser leaves it unchanged
    torch.testing.assert_close(responsibility_weighted_cross_entropy(logits, y, w / 2, 0.5), expected)


def test_mixture_of_experts_nll_is_minus_log_of_the_gated_prediction():
    logits, y = torch.randn(4, 3, 5), torch.tensor([0, 4, 2, 1])
    w = torch.softmax(torch.randn(4, 3), 1)
    py = logits.softmax(-1)[torch.arange(4), :, y]  # (4, 3) p_k(y_i | x_i)
    expected = -(w * py).sum(1).log().mean()
    torch.testing.assert_close(mixture_of_experts_nll(logits, y, w), expected)
    # a row of zero weights (a sample no head trains on) adds nothing
    w0 = torch.cat([w, torch.zeros(1, 3)])
    got = mixture_of_experts_nll(torch.cat([logits, torch.randn(1, 3, 5)]), torch.cat([y, y[:1]]), w0)
    torch.testing.assert_close(got, expected * 4 / 5)
    # one-hot gates reduce it to that head's cross-entropy
    onehot = torch.zeros(4, 3)
    onehot[:, 0] = 1.0
    torch.testing.assert_close(mixture_of_experts_nll(logits, y, onehot), F.cross_entropy(logits[:, 0], y))
