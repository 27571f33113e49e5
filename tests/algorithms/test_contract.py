"""Every algorithm that has a config in configs/ goes through the real round loop: 2 rounds on a
small real MNIST split, with the default channel and with a compressed one (partial upload and a
quantizing codec). A contract that nothing checks breaks silently (DESIGN.md); this is the check.
"""

from pathlib import Path

import lightning
import pytest
import torch

from fedgmi.cli import build_parser
from fedgmi.data import ScenarioConfig, build_scenario
from fedgmi.federated.channel import Channel
from fedgmi.federated.compression import StochasticQuantization
from fedgmi.federated.contract import check_strategy
from fedgmi.federated.evaluation import EvalConfig
from fedgmi.federated.server import FederationConfig, LoopState, run_federation
from fedgmi.federated.strategy import ProblemSpec

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(ROOT.glob("configs/pm_mnist*.yaml"))
#: Smaller settings where a config has the key (same code paths, less work).
SMALL = {"local_epochs": "1", "topic_restarts": "2", "warmup_rounds": "1", "synthetic_samples": "500"}
CHANNELS = {
    "default": lambda: Channel(),
    "compressed": lambda: Channel(uplink=StochasticQuantization(bits=4), upload_top_m=1),
}


def strategy_of(config: Path):
    """The config's algorithm, instantiated by the CLI's own parser, with :data:`SMALL` applied
    to the keys its ``init_args`` has."""
    parser = build_parser()
    init_args = parser.parse_args(["fit", "--config", str(config)]).fit.algorithm.init_args
    overrides = [arg for key, value in SMALL.items() if key in init_args
                 for arg in (f"--algorithm.init_args.{key}", value)]
    cfg = parser.parse_args(["fit", "--config", str(config), *overrides])
    sub = parser._subcommands_action._name_parser_map["fit"]
    return sub.instantiate(cfg.fit).algorithm


@pytest.fixture(scope="module")
def scenario(mnist_base):
    return build_scenario(ScenarioConfig(dataset="mnist", num_clients=4, samples_per_client=(60, 80), seed=1),
                          base=mnist_base)


@pytest.mark.parametrize("channel", sorted(CHANNELS))
@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_configured_algorithm_runs_two_rounds_through_the_loop(config, channel, scenario):
    strategy = strategy_of(config)
    train_examples = sum(len(c.x_train) for c in scenario.clients)
    spec = ProblemSpec(scenario.image_shape, scenario.num_components, scenario.num_classes,
                       len(scenario.clients), train_examples)
    strategy.setup(spec, lightning.Fabric(accelerator="cpu", devices=1), seed=0)
    before = [t.clone() for t in strategy.global_state]
    rows = []
    row, _ = run_federation(
        strategy, scenario, FederationConfig(rounds=2, client_fraction=1.0, eval_every=2),
        EvalConfig(num_samples=2, proportion_iters=5), seed=0, on_eval=lambda r, m, e: rows.append(m),
        state=LoopState(), progress=False, channel=CHANNELS[channel]())
    after = strategy.global_state
    assert all(torch.isfinite(t).all() for t in after)
    assert row["rounds_skipped"] == 0 and row["clients_rejected"] == 0 and row["clients_failed"] == 0
    assert 0.0 <= row["client_accuracy_mean"] <= 1.0
    if strategy.name == "Local":  # nothing is aggregated: the clients' own models changed
        assert row["bytes_up"] == 0 and all("theta" in strategy.client_state[c] for c in range(4))
        return
    assert any(not torch.equal(a, b) for a, b in zip(before, after)), "the global state did not change"
    assert row["bytes_up_rounds"] > 0 and row["bytes_down_rounds"] > 0
    if channel == "compressed":
        assert row["compression_ratio_up"] > 1.5


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_configured_algorithm_passes_check_strategy(config, scenario):
    """The exported contract test (fedgmi.check_strategy): complete hooks, a global state that
    aggregate replaces (never changes in place), the same state for the same seed, and a
    state_dict that restores into a fresh copy."""
    row = check_strategy(strategy_of(config), scenario)
    assert 0.0 <= row["client_accuracy_mean"] <= 1.0
