import math

import pytest
import torch

from fedgmi.errors import ConfigError
from fedgmi.federated.responsibilities import estimate_proportions, responsibilities


def test_soft_responsibilities_match_bayes_rule_by_hand():
    log_pi = torch.tensor([0.25, 0.75]).log()
    lik = torch.tensor([[0.2, 0.1], [0.01, 0.5]])
    r = responsibilities(log_pi, lik.log())
    expected = torch.tensor(
        [[0.25 * 0.2 / (0.25 * 0.2 + 0.75 * 0.1), 0.75 * 0.1 / (0.25 * 0.2 + 0.75 * 0.1)],
         [0.25 * 0.01 / (0.25 * 0.01 + 0.75 * 0.5), 0.75 * 0.5 / (0.25 * 0.01 + 0.75 * 0.5)]])
    torch.testing.assert_close(r, expected)


def test_responsibilities_are_stable_at_large_log_likelihoods_and_temperature_flattens():
    log_lik = torch.tensor([[-1000.0, -1001.0]])
    r = responsibilities(torch.zeros(2), log_lik)
    assert torch.isfinite(r).all()
    assert r[0, 0].item() == pytest.approx(1 / (1 + math.exp(-1)))
    r_hot = responsibilities(torch.zeros(2), log_lik, temperature=10.0)
    assert r_hot[0, 0].item() == pytest.approx(1 / (1 + math.exp(-0.1)))
    # the temperature tempers the likelihood only: the prior keeps its full weight
    prior = torch.tensor([0.9, 0.1]).log()
    r_prior = responsibilities(prior, torch.tensor([[0.0, 2.0]]), temperature=4.0)
    assert r_prior[0, 0].item() == pytest.approx(0.9 / (0.9 + 0.1 * math.exp(0.5)))


def test_hard_rule_is_one_hot_argmax():
    r = responsibilities(torch.zeros(3), torch.tensor([[0.0, 2.0, 1.0], [5.0, 0.0, 0.0]]), rule="hard")
    assert r.tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]


def test_proportions_recover_a_known_mixture_of_two_gaussians():
    torch.manual_seed(0)
    true_pi = torch.tensor([0.3, 0.7])
    z = torch.multinomial(true_pi, 20000, replacement=True)
    x = torch.randn(20000) + torch.tensor([-3.0, 3.0])[z]
    log_lik = torch.stack([torch.distributions.Normal(m, 1.0).log_prob(x) for m in (-3.0, 3.0)], 1)
    pi, r = estimate_proportions(log_lik, iters=50)
    torch.testing.assert_close(pi, true_pi, atol=0.015, rtol=0)
    assert ((r.argmax(1) == z).float().mean() > 0.99).item()
    torch.testing.assert_close(r.sum(1), torch.ones(20000))


def test_proportion_floor_keeps_every_component_alive():
    log_lik = torch.tensor([[0.0, -50.0]] * 10)
    pi, _ = estimate_proportions(log_lik, iters=20, floor=1e-4)
    assert pi[1] > 0 and pi.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize(("rule", "temperature"), [("softest", 1.0), ("soft", 0.0), ("soft", -1.0)])
def test_bad_rule_or_temperature_is_one_line_config_error(rule, temperature):
    with pytest.raises(ConfigError) as err:
        responsibilities(torch.zeros(2), torch.zeros(1, 2), rule=rule, temperature=temperature)
    assert "\n" not in str(err.value)
