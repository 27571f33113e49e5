"""Bring your own data: scenarios from tensors, a torch Dataset + K transforms, or K Datasets."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset
from torchvision.transforms import v2

from fedgmi.data import LabelPermutation
from fedgmi.data.custom import base_from_tensors, scenario_from_datasets, scenario_from_tensors
from fedgmi.errors import ConfigError


def _data(n: int = 600, shape=(1, 16, 16), classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def test_readme_example_tensors_and_transforms() -> None:
    images, labels = _data()
    scenario = scenario_from_tensors(
        images, labels,
        transforms=[None, v2.RandomInvert(p=1.0), v2.GaussianBlur(5, sigma=1.5)],
        num_clients=8, samples_per_client=(40, 60), seed=0)
    assert scenario.num_components == 3 and scenario.image_shape == (1, 16, 16) and scenario.num_classes == 4
    idx = torch.cat(scenario.truth.base_index_train + scenario.truth.base_index_test)
    assert idx.unique().numel() == idx.numel()
    client, z, i = scenario.clients[0], scenario.truth.z_train[0], scenario.truth.base_index_train[0]
    inverted = z == 1
    assert torch.allclose(client.x_train[inverted], 1 - images[i[inverted]].flatten(1))
    assert torch.equal(client.y_train, labels[i])


def test_random_transforms_are_seeded() -> None:
    images, labels = _data()
    make = lambda: scenario_from_tensors(images, labels, transforms=[None, v2.RandomRotation(30)],
                                         num_clients=4, samples_per_client=(40, 50), seed=1)
    a, b = make(), make()
    assert all(torch.equal(p.x_train, q.x_train) for p, q in zip(a.clients, b.clients))


def test_builtin_shift_on_own_tensors_and_uint8() -> None:
    images, labels = _data()
    scenario = scenario_from_tensors((images * 255).to(torch.uint8), labels, shift=LabelPermutation(2),
                                     num_clients=4, samples_per_client=(40, 50))
    assert scenario.component_names == ["perm0", "perm1"]


def test_one_dataset_with_transforms() -> None:
    images, labels = _data(shape=(3, 8, 8))
    scenario = scenario_from_datasets(TensorDataset(images, labels), [None, v2.Grayscale(3)],
                                      num_clients=4, samples_per_client=(40, 50))
    assert scenario.image_shape == (3, 8, 8) and scenario.num_components == 2


def test_k_datasets_are_resized_to_one_shape() -> None:
    a, b = _data(200, (3, 32, 32), 5, 1), _data(200, (1, 28, 28), 3, 2)
    scenario = scenario_from_datasets([TensorDataset(*a), TensorDataset(*b)], names=["colour", "grey"],
                                      num_clients=5, samples_per_client=(30, 50))
    assert scenario.image_shape == (3, 32, 32) and scenario.num_classes == 5
    assert scenario.component_names == ["colour", "grey"]
    for c, z in zip(scenario.clients, scenario.truth.z_train):
        assert (c.y_train[z == 1] < 3).all()


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: base_from_tensors(torch.rand(5, 2, 4, 4), torch.zeros(5, dtype=torch.long)), "C 1 or 3"),
        (lambda: base_from_tensors(torch.rand(5, 1, 4, 4) * 2, torch.zeros(5, dtype=torch.long)), "in [0, 1]"),
        (lambda: base_from_tensors(torch.rand(5, 1, 4, 4), torch.zeros(4, dtype=torch.long)), "one per image"),
        (lambda: scenario_from_tensors(*_data()), "exactly one"),
        (lambda: scenario_from_tensors(*_data(), transforms=[None, 3]), "transforms[1] = 3 is not callable"),
        (lambda: scenario_from_tensors(*_data(n=50), transforms=[None, None], num_clients=10,
                                       samples_per_client=(40, 50)), "holds 50"),
        (lambda: scenario_from_datasets(TensorDataset(*_data())), "needs transforms"),
    ],
)
def test_bad_input_is_one_line(call, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        call()
    assert needle in str(err.value) and "\n" not in str(err.value)
