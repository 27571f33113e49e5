"""Checkpoint files: atomic round files, random states, refusal of foreign or mismatched files."""

import random

import lightning
import numpy as np
import pytest
import torch

from fedgmi.errors import ConfigError
from fedgmi.federated.checkpoint import (
    check_signature,
    load_checkpoint,
    rng_states,
    save_round_checkpoint,
    set_rng_states,
    strategy_signature,
)


def draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_random_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    fabric = lightning.Fabric(accelerator="cpu", devices=1)
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn()  # leaves a cached Gaussian in numpy's state
    save_round_checkpoint(fabric, tmp_path, 1, {"rng": rng_states()}, keep=1)
    expected = draws()
    set_rng_states(load_checkpoint(tmp_path / "last.ckpt")["rng"])
    assert draws() == expected


def test_round_files_keep_the_newest_and_last_is_the_newest(tmp_path):
    fabric = lightning.Fabric(accelerator="cpu", devices=1)
    for r in range(1, 5):
        save_round_checkpoint(fabric, tmp_path, r, {"round": r}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "round-0003.ckpt", "round-0004.ckpt"]
    assert load_checkpoint(tmp_path / "last.ckpt")["round"] == 4


def test_truncated_checkpoint_is_refused_in_one_line(tmp_path):
    fabric = lightning.Fabric(accelerator="cpu", devices=1)
    path = save_round_checkpoint(fabric, tmp_path, 1, {"w": torch.randn(10_000)}, keep=1)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ConfigError, match="truncated") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)


def test_mismatched_strategy_or_components_are_refused():
    ours = strategy_signature("FedGMI", [torch.zeros(5), torch.zeros(5)])
    check_signature("x.ckpt", ours, ours)
    with pytest.raises(ConfigError, match="written by 'IFCA'"):
        check_signature("x.ckpt", strategy_signature("IFCA", [torch.zeros(5)] * 2), ours)
    with pytest.raises(ConfigError, match=r"sizes \[5, 5, 5\]"):
        check_signature("x.ckpt", strategy_signature("FedGMI", [torch.zeros(5)] * 3), ours)


def test_a_composed_shift_describes_its_parts_the_same_in_every_process():
    from fedgmi.data.shifts import Composed, LabelPermutation, Rotation
    from fedgmi.federated.checkpoint import describe_shift

    def tied(angles):
        return describe_shift(Composed([Rotation(angles), LabelPermutation(3)]))

    assert tied([0, 90, 180]) == tied([0.0, 90.0, 180.0])  # no object addresses: a resume can match it
    assert tied([0, 90, 180]).startswith("Composed(shifts=[Rotation(angles=[0, 90, 180]), LabelPermutation(")
    assert tied([0, 90, 180]) != tied([0, 90, 270])


def test_a_deployments_checkpoint_resumes_with_a_warning_an_unsigned_one_is_refused():
    from fedgmi.errors import ConfigError
    from fedgmi.federated.checkpoint import DEPLOYMENT, check_scenario

    expected = {"scenario.dataset": "digits", "seed": 0}
    with pytest.warns(UserWarning, match="written by a deployment whose server never saw the clients' data"):
        check_scenario("last.ckpt", dict(DEPLOYMENT), expected)
    with pytest.raises(ConfigError, match="holds no scenario signature"):
        check_scenario("last.ckpt", None, expected)
    with pytest.raises(ConfigError, match="written for seed = 1; this run has seed = 0"):
        check_scenario("last.ckpt", {**expected, "seed": 1}, expected)
