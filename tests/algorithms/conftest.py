"""Fixtures of the peer tests: a small real (digits) scenario and a strategy builder."""

import lightning
import pytest

from fedgmi.data import ScenarioConfig, build_scenario
from fedgmi.federated.strategy import ProblemSpec


@pytest.fixture(scope="session")
def small_scenario(digits_base):
    """6 digits clients of 100-140 samples, K = 3 rotations."""
    cfg = ScenarioConfig(dataset="digits", num_clients=6, samples_per_client=(100, 140), seed=3)
    return build_scenario(cfg, base=digits_base)


@pytest.fixture
def make_peer(small_scenario):
    """make_peer(cls, num_components=None, seed=0, train_examples=None, **kwargs): a set-up strategy
    (CPU)."""

    def make(cls, num_components=None, seed=0, train_examples=None, **kwargs):
        sc = small_scenario
        strategy = cls(**kwargs)
        spec = ProblemSpec(sc.image_shape, num_components or sc.num_components, sc.num_classes, len(sc.clients),
                           train_examples)
        strategy.setup(spec, lightning.Fabric(accelerator="cpu", devices=1), seed=seed)
        return strategy

    return make
