"""Evaluation on a closed-form mixture: two Gaussian components, known client proportions."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fedgmi.data import ClientData
from fedgmi.federated.evaluation import EvalConfig, evaluate
from fedgmi.federated.strategy import EvaluationHooks, Strategy

MEANS = torch.tensor([[-3.0, -3.0], [3.0, 3.0]])


class GaussianMixtureStrategy(Strategy, EvaluationHooks):
    """Components N(mu_k, I) in 2-D; component k predicts class k with probability 0.9."""

    def __init__(self):
        self.fabric = SimpleNamespace(device=torch.device("cpu"))
        self.client_state = {}

    @property
    def global_state(self):
        return (MEANS.flatten(),)

    def client_update(self, task, data, state):
        raise NotImplementedError

    def aggregate(self, round_idx, replies):
        raise NotImplementedError

    def component_outputs(self, x, estimator=None, num_samples=None, generator=None):
        log_px = torch.distributions.Normal(MEANS, 1.0).log_prob(x[:, None, :]).sum(-1)  # (N, K)
        class_lp = torch.full((len(x), 2, 2), math.log(0.1))
        class_lp[:, 0, 0] = class_lp[:, 1, 1] = math.log(0.9)
        return log_px, class_lp


def make_scenario(proportions, n=2000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    clients, z_test, true = [], [], []
    for c, pi in enumerate(proportions):
        parts = {}
        for part in ("train", "test"):
            z = torch.multinomial(torch.tensor(pi), n, replacement=True, generator=gen)
            parts[part] = (MEANS[z] + torch.randn(n, 2, generator=gen), z)
        clients.append(ClientData(c, parts["train"][0], parts["train"][1], parts["test"][0], parts["test"][1]))
        z_test.append(parts["test"][1])
        true.append(torch.bincount(parts["train"][1], minlength=2).double() / n)
    truth = SimpleNamespace(proportions=torch.stack(true), z_test=z_test)
    return SimpleNamespace(clients=clients, truth=truth, image_shape=(1, 1, 2))


def test_unseen_clients_recover_their_proportions_from_unlabelled_data():
    props = [[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.65, 0.35]]
    scenario = make_scenario(props)
    result = evaluate(GaussianMixtureStrategy(), scenario, EvalConfig(), unseen={2, 3})
    m = result.metrics
    assert m["assignment_accuracy"] > 0.99
    assert m["proportion_error_tv"] < 0.01
    assert m["unseen_proportion_error_tv"] < 0.01
    np.testing.assert_allclose(result.estimated_proportions[2:], scenario.truth.proportions[2:].numpy(), atol=0.01)
    # personalised prediction = class of the (almost surely known) component with prob 0.9
    assert m["client_accuracy_mean"] == pytest.approx(1.0)  # labels are the components here
    np.testing.assert_allclose(result.component_accuracy_matched, [[1.0, 0.0], [0.0, 1.0]])
    assert m["unseen_client_accuracy_mean"] == pytest.approx(1.0)
    nll = -torch.distributions.Normal(0.0, 1.0).log_prob(torch.randn(200000)).sum().item() / 100000
    assert m["test_nll"] == pytest.approx(nll, abs=0.05)  # 2-D standard normal entropy, nats


def test_generalization_is_each_clients_accuracy_on_the_pooled_test_parts_of_all_clients():
    from fedgmi.federated.evaluation import generalization_accuracy

    scenario = make_scenario([[0.95, 0.05], [0.2, 0.8]], n=500)
    share_of_class_0 = (torch.cat([c.y_test for c in scenario.clients]) == 0).double().mean().item()
    assert 0.5 < share_of_class_0 < 0.65
    pis = {0: torch.tensor([1.0, 0.0]), 1: torch.tensor([0.5, 0.5])}
    scores = generalization_accuracy(GaussianMixtureStrategy(), scenario, EvalConfig(), pis, torch.Generator())
    # client 0 trusts component 0 only: it always says class 0, right on exactly the pool's class-0
    # share; client 1 separates the two Gaussians (6 sqrt(2) apart) all but perfectly
    assert scores[0] == pytest.approx(share_of_class_0)
    assert scores[1] > 0.99


def test_generalization_metrics_appear_only_when_asked():
    scenario = make_scenario([[0.8, 0.2], [0.3, 0.7]], n=300)
    off = evaluate(GaussianMixtureStrategy(), scenario, EvalConfig()).metrics
    on = evaluate(GaussianMixtureStrategy(), scenario, EvalConfig(generalization=True)).metrics
    assert "generalization_accuracy_mean" not in off
    assert 0.99 < on["generalization_accuracy_mean"] <= 1.0 and on["generalization_accuracy_p10"] <= 1.0
    with pytest.raises(Exception, match="evaluation.generalization"):
        EvalConfig(generalization="yes")
