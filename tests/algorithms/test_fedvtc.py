"""FedVTC on real MNIST: two architectures in one run, statistics (and the generator) as the only
traffic, exact pooling on the server, synthetic fine-tuning, exact resume through the CLI."""

from pathlib import Path

import lightning
import pytest
import torch

from fedgmi.algorithms.fedvtc import FedVTC
from fedgmi.cli import main
from fedgmi.data import ScenarioConfig, build_scenario
from fedgmi.errors import ConfigError
from fedgmi.federated.channel import Channel
from fedgmi.federated.class_statistics import ClassStatistics
from fedgmi.federated.compression import StochasticQuantization
from fedgmi.federated.evaluation import EvalConfig
from fedgmi.federated.server import FederationConfig, LoopState, run_federation
from fedgmi.federated.strategy import ProblemSpec
from tests.helpers import run_client

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"local_epochs": 2, "generator_epochs": 1, "feature_dim": 16, "warmup_rounds": 1, "matching_weight": 1.0}


@pytest.fixture(scope="module")
def scenario(mnist_base):
    return build_scenario(ScenarioConfig(dataset="mnist", num_clients=4, samples_per_client=(60, 80), seed=1),
                          base=mnist_base)


def make(scenario, **kwargs) -> FedVTC:
    strategy = FedVTC(**{**SMALL, **kwargs})
    spec = ProblemSpec(scenario.image_shape, scenario.num_components, scenario.num_classes, len(scenario.clients))
    strategy.setup(spec, lightning.Fabric(accelerator="cpu", devices=1), seed=0)
    return strategy


def one_round(strategy, scenario, round_idx, clients):
    tasks = strategy.configure_round(round_idx, clients)
    replies = [run_client(strategy, t, scenario.clients[t.client_id]) for t in tasks]
    return tasks, replies, strategy.aggregate(round_idx, replies)


def test_cnn_and_mlp_clients_train_predict_and_their_statistics_pool_exactly(scenario):
    strategy = make(scenario, local_epochs=25, batch_size=16)
    assert [strategy.architecture(c) for c in range(4)] == ["cnn", "mlp", "cnn", "mlp"]
    tasks, replies, _ = one_round(strategy, scenario, 0, [0, 1, 2, 3])
    sizes = {strategy.architecture(c): strategy.client_state[c]["model"].numel() for c in range(4)}
    assert sizes["cnn"] != sizes["mlp"]  # two architectures in one run
    y_size = scenario.num_classes * (1 + 2 * 16)
    psi_size = strategy.global_state[0].numel()
    assert all(r.bytes_up == 4 * (psi_size + 1 + y_size) for r in replies)  # generator delta, weight, statistics
    assert all(t.bytes_down == 4 * (psi_size + y_size) for t in tasks)
    pooled = ClassStatistics.from_flat(strategy.global_state[1], scenario.num_classes)
    counts = torch.bincount(torch.cat([c.y_train for c in scenario.clients]), minlength=scenario.num_classes)
    torch.testing.assert_close(pooled.counts, counts.float())
    parts = [ClassStatistics.from_flat(r.statistics["class_statistics"], scenario.num_classes) for r in replies]
    mean = sum(p.counts[:, None] * p.means for p in parts) / counts.clamp_min(1)[:, None]
    torch.testing.assert_close(pooled.means, mean, rtol=1e-4, atol=1e-5)
    for c in range(4):  # every client predicts with its own model, above chance on its own data
        client = scenario.clients[c]
        log_px, class_lp = strategy.client_component_outputs(c, "train", client.x_train)
        assert log_px.shape == (len(client.x_train), 1) and class_lp.shape == (len(client.x_train), 1, 10)
        assert float((class_lp[:, 0].argmax(-1) == client.y_train).float().mean()) > 0.5
    _, replies, metrics = one_round(strategy, scenario, 1, [0, 1])  # statistics known: fine-tuning starts
    terms = ("synthetic_cross_entropy", "feature_kl", "matching_cross_entropy")
    assert all(r.metrics[t] > 0 for r in replies for t in terms)
    assert metrics["classes_pooled"] == float((counts > 0).sum())


def test_an_unseen_client_has_its_architectures_initial_model(scenario):
    strategy = make(scenario)
    one_round(strategy, scenario, 0, [0])
    assert torch.equal(strategy.client_model(3), strategy.initial_models["mlp"])
    assert not torch.equal(strategy.client_model(0), strategy.initial_models["cnn"])


@pytest.mark.parametrize("share", [True, False])
def test_runs_under_the_compressed_channel_with_honest_bytes(scenario, share):
    strategy = make(scenario, share_generator=share, local_epochs=1)
    row, _ = run_federation(
        strategy, scenario, FederationConfig(rounds=2, client_fraction=1.0, eval_every=2),
        EvalConfig(num_samples=2, proportion_iters=5), seed=0, on_eval=lambda r, m, e: None, state=LoopState(),
        progress=False, channel=Channel(uplink=StochasticQuantization(bits=4), upload_top_m=1))
    assert row["clients_failed"] == 0 and 0 <= row["client_accuracy_mean"] <= 1
    statistics = 4 * scenario.num_classes * (1 + 2 * 16)
    if share:  # the generator's delta is compressed, the statistics are not
        assert row["compression_ratio_up"] > 1.5 and row["bytes_up_rounds"] > 8 * statistics
    else:  # nothing to compress: only the statistics cross, each generator stays with its client
        assert row["compression_ratio_up"] == 1.0 and row["bytes_up_rounds"] == 8 * statistics
        assert all("generator" in strategy.client_state[c] for c in range(4))


def test_bad_settings_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="architectures"):
        FedVTC(architectures=["cnn", "resnet"])
    with pytest.raises(ConfigError, match="architectures"):
        FedVTC(architectures=[])
    with pytest.raises(ConfigError, match="min_variance"):
        FedVTC(min_variance=0.0)


def test_two_rounds_then_resume_equals_the_uninterrupted_run(tmp_path, mnist_data_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    args = ["fit", "--config", str(ROOT / "configs" / "pm_mnist_fedvtc.yaml"), "--scenario.data_dir",
            str(mnist_data_dir), "--scenario.download", "false", "--scenario.num_clients", "4",
            "--scenario.samples_per_client", "[60, 80]", "--federation.eval_every", "1",
            *[a for k, v in SMALL.items() for a in (f"--algorithm.init_args.{k}", str(v))]]
    assert main([*args, "--federation.rounds", "4", "--output_dir", str(tmp_path / "whole")]) == 0
    assert main([*args, "--federation.rounds", "2", "--output_dir", str(tmp_path / "part")]) == 0
    assert torch.load(tmp_path / "part" / "checkpoints" / "last.ckpt", weights_only=True)["loop"]["next_round"] == 2
    assert main(["fit", "--config", str(tmp_path / "part" / "config.yaml"), "--federation.rounds", "4",
                 "--ckpt_path", str(tmp_path / "part" / "checkpoints" / "last.ckpt")]) == 0
    whole, part = (torch.load(tmp_path / d / "checkpoints" / "last.ckpt", weights_only=True)["strategy"]
                   for d in ("whole", "part"))
    assert all(torch.equal(a, b) for a, b in zip(whole["global_state"], part["global_state"]))
    assert whole["client_state"].keys() == part["client_state"].keys()
    for c, state in whole["client_state"].items():
        assert all(torch.equal(v, part["client_state"][c][k]) for k, v in state.items())
    assert all(torch.equal(v, part["client_statistics"][c]) for c, v in whole["client_statistics"].items())
