"""Tests of the probabilistic-mixture scenario on sklearn digits and the MNIST test split."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fedgmi.data import Scenario, ScenarioConfig, build_scenario, rotate_images
from fedgmi.errors import ConfigError


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """Explicit folders in these tests must not be overridden by FEDGMI_DATA_DIR."""
    monkeypatch.delenv("FEDGMI_DATA_DIR", raising=False)


def _digits_config(**overrides) -> ScenarioConfig:
    settings = {"dataset": "digits", "num_clients": 10, "samples_per_client": (60, 90), "seed": 3}
    return ScenarioConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def digits_scenario(digits_base) -> Scenario:
    return build_scenario(_digits_config(), base=digits_base)


@pytest.fixture(scope="module")
def mnist_scenario(mnist_data_dir: Path, mnist_base) -> Scenario:
    config = ScenarioConfig(
        dataset="mnist",
        data_dir=str(mnist_data_dir),
        download=False,
        num_clients=10,
        samples_per_client=(200, 300),
        alpha=0.5,
        seed=1,
    )
    return build_scenario(config, base=mnist_base)


@pytest.fixture(params=["digits", "mnist"])
def scenario_and_base(request) -> tuple[Scenario, object]:
    name = request.param
    return request.getfixturevalue(f"{name}_scenario"), request.getfixturevalue(f"{name}_base")


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


# --- structure ---------------------------------------------------------------------------------


def test_shapes_and_types(scenario_and_base) -> None:
    scenario, base = scenario_and_base
    c_count, k = scenario.config.num_clients, scenario.num_components
    d = base.images[0].numel()
    assert scenario.image_shape == tuple(base.images.shape[1:]) and scenario.input_dim == d
    assert len(scenario.clients) == c_count == scenario.num_clients
    assert scenario.component_names == ["rot0", "rot90", "rot180"] and k == 3
    assert scenario.num_classes == 10 and scenario.source == base.source
    truth = scenario.truth
    assert truth.proportions.shape == (c_count, k) and truth.proportions.dtype == torch.float64
    lo, hi = scenario.config.samples_per_client
    for c, client in enumerate(scenario.clients):
        assert client.client_id == c
        n_tr, n_te = client.y_train.numel(), client.y_test.numel()
        assert n_tr >= 1 and n_te >= 1 and lo <= n_tr + n_te <= hi
        assert client.x_train.shape == (n_tr, d) and client.x_test.shape == (n_te, d)
        assert client.x_train.dtype == torch.float32 and client.y_train.dtype == torch.int64
        assert truth.z_train[c].shape == (n_tr,) and truth.z_test[c].shape == (n_te,)
        assert truth.base_index_train[c].shape == (n_tr,)
        assert truth.base_index_test[c].shape == (n_te,)
        for x in (client.x_train, client.x_test):
            assert x.min() >= 0.0 and x.max() <= 1.0
        frac = n_te / (n_tr + n_te)
        assert abs(frac - scenario.config.test_fraction) <= 1.0 / (n_tr + n_te) + 1e-9


def test_base_images_are_disjoint_everywhere(scenario_and_base) -> None:
    scenario, base = scenario_and_base
    truth = scenario.truth
    every = torch.cat(truth.base_index_train + truth.base_index_test)
    assert every.unique().numel() == every.numel()  # no image in two clients/components/parts
    assert every.min() >= 0 and every.max() < base.labels.numel()


def test_labels_follow_base_labels(scenario_and_base) -> None:
    scenario, base = scenario_and_base
    for c, client in enumerate(scenario.clients):
        assert torch.equal(client.y_train, base.labels[scenario.truth.base_index_train[c]])
        assert torch.equal(client.y_test, base.labels[scenario.truth.base_index_test[c]])


def test_images_are_rotated_base_images(scenario_and_base) -> None:
    scenario, base = scenario_and_base
    truth = scenario.truth
    shape = scenario.image_shape
    seen = set()
    for c, client in enumerate(scenario.clients):
        for x, z, idx in (
            (client.x_train, truth.z_train[c], truth.base_index_train[c]),
            (client.x_test, truth.z_test[c], truth.base_index_test[c]),
        ):
            images = x.view(-1, *shape)
            for k in range(3):
                mask = z == k
                expected = torch.rot90(base.images[idx[mask]], k, dims=(-2, -1))
                assert torch.equal(images[mask], expected)
                if bool(mask.any()):
                    seen.add(k)
    assert seen == {0, 1, 2}


def test_component_zero_and_180_exact(scenario_and_base) -> None:
    scenario, base = scenario_and_base
    truth, shape = scenario.truth, scenario.image_shape
    for c, client in enumerate(scenario.clients):
        z, idx = truth.z_train[c], truth.base_index_train[c]
        images = client.x_train.view(-1, *shape)
        for i in torch.nonzero(z == 0).flatten()[:2].tolist():
            assert torch.equal(images[i], base.images[idx[i]])
        for i in torch.nonzero(z == 2).flatten()[:2].tolist():
            assert torch.equal(images[i], torch.rot90(base.images[idx[i]], 2, dims=(-2, -1)))
            assert not torch.equal(images[i], base.images[idx[i]])


def test_components_are_interleaved(digits_scenario) -> None:
    client = max(digits_scenario.clients, key=lambda c: c.y_train.numel())
    z = digits_scenario.truth.z_train[client.client_id]
    assert len(z.unique()) > 1  # precondition for the check below
    assert not torch.equal(z, z.sort().values)


# --- proportions -------------------------------------------------------------------------------


def test_realised_proportions_follow_targets(scenario_and_base) -> None:
    scenario, _ = scenario_and_base
    truth = scenario.truth
    target = truth.target_proportions
    assert torch.allclose(target.sum(1), torch.ones(len(scenario.clients), dtype=torch.float64))
    for c in range(len(scenario.clients)):
        n_tr, n_te = truth.z_train[c].numel(), truth.z_test[c].numel()
        realised_train = torch.bincount(truth.z_train[c], minlength=3).double() / n_tr
        realised_test = torch.bincount(truth.z_test[c], minlength=3).double() / n_te
        assert torch.allclose(truth.proportions[c], realised_train)
        assert (realised_train - target[c]).abs().max() <= 2.0 / n_tr + 1e-9
        assert (realised_test - target[c]).abs().max() <= 2.0 / n_te + 1e-9


def test_dirichlet_proportions_are_heterogeneous(mnist_scenario) -> None:
    pi = mnist_scenario.truth.target_proportions
    assert pi.std(0).min() > 0.05  # alpha = 0.5: clients differ markedly


def test_explicit_proportions_are_honoured(digits_base) -> None:
    rows = [[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.2, 0.3, 0.5], [1 / 3, 1 / 3, 1 / 3]]
    config = _digits_config(num_clients=4, proportions=rows, samples_per_client=(100, 100))
    scenario = build_scenario(config, base=digits_base)
    expected = torch.tensor(rows, dtype=torch.float64)
    assert torch.allclose(scenario.truth.target_proportions, expected)
    assert torch.equal(scenario.truth.z_train[0], torch.zeros(80, dtype=torch.int64))
    assert torch.equal(scenario.truth.z_test[0], torch.zeros(20, dtype=torch.int64))
    assert torch.bincount(scenario.truth.z_train[1], minlength=3).tolist() == [0, 40, 40]
    assert torch.bincount(scenario.truth.z_train[2], minlength=3).tolist() == [16, 24, 40]
    assert torch.bincount(scenario.truth.z_test[2], minlength=3).tolist() == [4, 6, 10]
    assert (scenario.truth.proportions - expected).abs().max() <= 1 / 80


# --- determinism -------------------------------------------------------------------------------


def _same(a: Scenario, b: Scenario) -> bool:
    pairs = [(x.x_train, y.x_train) for x, y in zip(a.clients, b.clients)]
    pairs += [(x.y_test, y.y_test) for x, y in zip(a.clients, b.clients)]
    pairs += list(zip(a.truth.base_index_train, b.truth.base_index_train))
    pairs += list(zip(a.truth.z_test, b.truth.z_test))
    return len(a.clients) == len(b.clients) and all(
        p.shape == q.shape and torch.equal(p, q) for p, q in pairs
    )


def test_same_seed_same_scenario(digits_base, digits_scenario) -> None:
    again = build_scenario(_digits_config(), base=digits_base)
    assert _same(again, digits_scenario)
    assert torch.equal(again.truth.proportions, digits_scenario.truth.proportions)


def test_different_seed_different_scenario(digits_base, digits_scenario) -> None:
    other = build_scenario(_digits_config(seed=4), base=digits_base)
    assert not _same(other, digits_scenario)
    assert not torch.equal(other.truth.target_proportions, digits_scenario.truth.target_proportions)


def test_build_loads_dataset_itself(mnist_data_dir: Path, mnist_base) -> None:
    config = ScenarioConfig(data_dir=str(mnist_data_dir), download=False, num_clients=2, seed=5)
    built = build_scenario(config)
    assert _same(built, build_scenario(config, base=mnist_base))
    assert "local IDX test split" in built.source


def test_summary_mentions_key_facts(mnist_scenario) -> None:
    text = mnist_scenario.summary()
    assert "local IDX test split" in text and "K=3" in text and "rot90" in text
    n_train = sum(c.y_train.numel() for c in mnist_scenario.clients)
    assert f"{n_train} train" in text and 3 <= len(text.splitlines()) <= 8


# --- rotation helper ---------------------------------------------------------------------------


def test_rotate_images_matches_torchvision_and_stays_in_range() -> None:
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as tvf

    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for angle in (90.0, -90.0, 270.0, 450.0):
        nearest = tvf.rotate(images, angle, interpolation=InterpolationMode.NEAREST)
        assert torch.equal(rotate_images(images, angle), nearest)
    assert torch.equal(rotate_images(images, 360.0), images)
    odd = rotate_images(images, 30.0)
    assert odd.shape == images.shape and odd.min() >= 0.0 and odd.max() <= 1.0


def test_non_right_angles_build(digits_base) -> None:
    config = _digits_config(angles=[0.0, 22.5, 45.0], num_clients=3)
    scenario = build_scenario(config, base=digits_base)
    assert scenario.component_names == ["rot0", "rot22.5", "rot45"]
    for client in scenario.clients:
        assert client.x_train.min() >= 0.0 and client.x_train.max() <= 1.0


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"alpha": 0.0}, "alpha = 0.0"),
        ({"alpha": -1.5}, "-1.5"),
        ({"alpha": float("nan")}, "nan"),
        ({"num_clients": 1, "proportions": [[0.5, 0.6, 0.0]]}, "[0.5, 0.6, 0.0]"),
        ({"num_clients": 1, "proportions": [[1.2, -0.2, 0.0]]}, "-0.2"),
        ({"num_clients": 1, "proportions": [[0.5, 0.5]]}, "[0.5, 0.5]"),
        ({"num_clients": 3, "proportions": [[1.0, 0.0, 0.0]]}, "num_clients = 3"),
        ({"angles": []}, "angles = []"),
        ({"angles": [0.0, 360.0]}, "360.0"),
        ({"num_clients": 0}, "num_clients = 0"),
        ({"samples_per_client": (1, 5)}, "(1, 5)"),
        ({"samples_per_client": (9, 5)}, "(9, 5)"),
        ({"test_fraction": 0.0}, "test_fraction = 0.0"),
        ({"test_fraction": 1.0}, "test_fraction = 1.0"),
        ({"seed": -1}, "seed = -1"),
        ({"dataset": "foo"}, "'foo'"),
    ],
)
def test_bad_config_is_one_line_config_error(overrides: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        _digits_config(**overrides)
    assert needle in _one_line(err)


def test_off_simplex_message_names_row() -> None:
    rows = [[1.0, 0.0, 0.0]] * 3 + [[0.5, 0.6, 0.0]]
    with pytest.raises(ConfigError) as err:
        _digits_config(num_clients=4, proportions=rows)
    assert _one_line(err) == (
        "proportions[3] = [0.5, 0.6, 0.0] is off the simplex: entries must be >= 0 and sum to 1"
    )


def test_validate_catches_later_mutation(digits_base) -> None:
    config = _digits_config()
    config.alpha = -2.0
    with pytest.raises(ConfigError, match="alpha = -2.0"):
        build_scenario(config, base=digits_base)


def test_too_many_samples(digits_base) -> None:
    config = _digits_config(num_clients=20, samples_per_client=(100, 100))
    with pytest.raises(ConfigError) as err:
        build_scenario(config, base=digits_base)
    message = _one_line(err)
    assert "2000 samples" in message and "holds 1797" in message and "'digits'" in message


def test_too_many_samples_mnist(mnist_base, mnist_data_dir: Path) -> None:
    config = ScenarioConfig(
        data_dir=str(mnist_data_dir), download=False, num_clients=40, samples_per_client=(300, 300)
    )
    with pytest.raises(ConfigError) as err:
        build_scenario(config, base=mnist_base)
    message = _one_line(err)
    assert "12000 samples" in message and "holds 10000" in message


def test_missing_data_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    config = ScenarioConfig(dataset="mnist", data_dir=str(missing), download=False)
    with pytest.raises(ConfigError) as err:
        build_scenario(config)
    assert str(missing) in _one_line(err)


def test_smallest_clients_get_one_train_and_one_test(digits_base) -> None:
    scenario = build_scenario(_digits_config(samples_per_client=(2, 2)), base=digits_base)
    for client in scenario.clients:
        assert client.y_train.numel() == 1 and client.y_test.numel() == 1


def test_base_of_other_dataset_is_refused(digits_base) -> None:
    config = replace(_digits_config(), dataset="mnist")
    with pytest.raises(ConfigError, match="'digits'"):
        build_scenario(config, base=digits_base)
