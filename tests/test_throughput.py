"""benchmarks/throughput.py: its floor does exactly fedgmi's work, and its naive way's
torchvision-style dataset yields the client's own tensors."""

from pathlib import Path

import torch

from tests.helpers import digits_scenario, load_benchmark, make_fedgmi

ROOT = Path(__file__).resolve().parents[1]


def load_throughput():
    return load_benchmark("throughput")


def test_floor_client_computes_fedgmis_updates_and_counts_the_samples_it_trains(digits_base):
    throughput = load_throughput()
    scenario = digits_scenario(digits_base)
    strategy = make_fedgmi(scenario, local_epochs=2, classifier_sharing="separate")  # the benchmark's layout
    tasks = strategy.configure_round(20, [0, 1, 2])  # a VAE round
    priors = {t.client_id: strategy.client_proportions(t.client_id).clone() for t in tasks}
    ways = throughput.make_ways(strategy, scenario, priors)
    replies, floor = ways["fedgmi"](tasks), ways["floor"](tasks)
    assert throughput.max_update_diff(replies, [updates for _, updates in floor]) == 0.0
    for task, (trained, updates) in zip(tasks, floor):
        assert any(u is not None for u in updates) and trained >= len(scenario.clients[task.client_id].x_train) * strategy.training.local_epochs
    # the naive way trains every component on every sample: K passes of the data per epoch
    n = sum(len(scenario.clients[t.client_id].x_train) for t in tasks)
    assert ways["naive_tensor_data"](tasks) == 3 * n * strategy.training.local_epochs


def test_image_dataset_gives_back_the_float_images():
    throughput = load_throughput()
    x = torch.randint(0, 256, (5, 784)).float() / 255
    y = torch.arange(5)
    dataset = throughput.ImageDataset(x, y, image_shape=(1, 28, 28))
    image, label = dataset[3]
    assert len(dataset) == 5 and torch.equal(image, x[3]) and label == 3
