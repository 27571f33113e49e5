"""pFedGM on real MNIST: what crosses the wire (statistics counted), the pooled prior, the heads
of seen and unseen clients, personalised accuracy on class-skewed clients, and exact resume."""

import io

import lightning
import pytest
import torch

from fedgmi.algorithms.pfedgm import PFedGM
from fedgmi.data import ScenarioConfig, build_scenario
from fedgmi.data.shifts import ClassSkew
from fedgmi.errors import ConfigError
from fedgmi.federated.evaluation import EvalConfig, evaluate
from fedgmi.federated.server import FederationConfig, LoopState, run_round
from fedgmi.federated.strategy import ProblemSpec
from fedgmi.models.features import CNNFeatures

FEATURES = 32


@pytest.fixture(scope="module")
def skewed(mnist_base):
    """6 MNIST clients of 100-150 samples whose classes follow Dirichlet(0.1) class mixtures."""
    cfg = ScenarioConfig(dataset="mnist", num_clients=6, samples_per_client=(100, 150), seed=0,
                         shift=ClassSkew(3, dirichlet=0.1))
    return build_scenario(cfg, base=mnist_base)


def make(scenario, **kwargs) -> PFedGM:
    kwargs = {"extractor": lambda shape: CNNFeatures(shape, FEATURES), "local_epochs": 2, **kwargs}
    strategy = PFedGM(**kwargs)
    spec = ProblemSpec(scenario.image_shape, scenario.num_components, scenario.num_classes, len(scenario.clients))
    strategy.setup(spec, lightning.Fabric(accelerator="cpu", devices=1), seed=0)
    return strategy


def train(strategy, scenario, rounds: range, client_fraction: float = 1.0, ids=None) -> LoopState:
    state, federation = LoopState(), FederationConfig(rounds=max(rounds) + 1, client_fraction=client_fraction)
    ids = list(range(len(scenario.clients))) if ids is None else ids
    for rnd in rounds:
        run_round(strategy, scenario, federation, 0, rnd, ids, state, warn=print)
    return state


@pytest.mark.parametrize("key, value", [("compactness", -1.0), ("margin", float("nan")), ("prior_strength", -2),
                                        ("head_covariance", "full"), ("fusion_variance", "local"),
                                        ("variance_floor", 0.0)])
def test_bad_settings_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=f"algorithm.init_args.{key}"):
        PFedGM(**{key: value})


def test_one_round_sends_statistics_up_and_pools_them_into_the_prior(skewed):
    strategy = make(skewed)
    size, y, d = strategy.global_state[0].numel(), skewed.num_classes, FEATURES
    state = train(strategy, skewed, range(1), ids=[0, 1, 2, 3])  # clients 4, 5 never train
    clients = skewed.clients
    assert state.bytes_up == 4 * 4 * (size + 1 + y * (1 + 2 * d))  # delta, weight n_c, statistics
    assert state.bytes_down == 4 * 4 * (size + y * (1 + 3 * d))  # theta, pooled statistics, tau^2
    prior, tau2 = strategy.prior
    counts = sum(torch.bincount(clients[c].y_train, minlength=y) for c in range(4)).float()
    torch.testing.assert_close(prior.counts, counts)
    assert bool((tau2 >= 0).all()) and bool((prior.variances[counts > 0] > 0).any())
    x = clients[0].x_test
    log_px, own = strategy.client_component_outputs(0, "test", x)
    assert own.shape == (len(x), 1, y) and torch.equal(log_px, torch.zeros(len(x), 1))
    torch.testing.assert_close(own.exp().sum(-1), torch.ones(len(x), 1))
    unseen = strategy.client_component_outputs(5, "test", x)[1]
    torch.testing.assert_close(unseen, strategy.component_outputs(x)[1])  # an unseen client: the global head
    assert not torch.allclose(own, unseen)  # a trained client: its own head


def test_personalised_accuracy_on_class_skewed_clients_beats_chance_by_far(skewed):
    strategy = make(skewed)
    train(strategy, skewed, range(8))  # 8 rounds of 2 local epochs on 6 x ~100 samples
    metrics = evaluate(strategy, skewed, EvalConfig(num_samples=1, proportion_iters=2)).metrics
    majority = [torch.bincount(c.y_test).max() / len(c.y_test) for c in skewed.clients]  # guessing its top class
    assert metrics["client_accuracy_mean"] > max(0.6, float(sum(majority) / len(majority)) + 0.3)  # measured 0.72


def test_two_rounds_then_resume_equal_the_uninterrupted_run_bit_exactly(skewed):
    whole = make(skewed)
    train(whole, skewed, range(4), client_fraction=0.5)
    first = make(skewed)
    train(first, skewed, range(2), client_fraction=0.5)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = make(skewed)  # a fresh process: new strategy and worker, the checkpoint loaded
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    train(resumed, skewed, range(2, 4), client_fraction=0.5)
    for a, b in zip(whole.global_state, resumed.global_state):
        assert torch.equal(a, b)
    assert whole.client_state.keys() == resumed.client_state.keys()
    for c, s in whole.client_state.items():
        assert all(torch.equal(v, resumed.client_state[c][k]) for k, v in s.items())
