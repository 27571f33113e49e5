"""check_strategy and the static contract check: a class missing a required hook is refused in
one line (by validate, before any work), an aggregate that changes the old global state in
place is caught, and a complete strategy passes."""

from pathlib import Path

import pytest
import torch

from fedgmi.algorithms import FedAvg
from fedgmi.cli import main
from fedgmi.errors import ConfigError
from fedgmi.federated import ContractError, Strategy, check_strategy
from fedgmi.federated.contract import contract_problems

ROOT = Path(__file__).resolve().parents[2]


class Plain(Strategy):
    """A plain Strategy subclass that leaves out the evaluation hook ``component_outputs``."""

    def setup(self, spec, fabric, seed):
        super().setup(spec, fabric, seed)
        self.global_state = (torch.zeros(3),)

    def client_update(self, task, data, state):
        return task.reply(len(data.x_train), [None], [0.0]), state

    def aggregate(self, round_idx, replies):
        return {}


class InPlace(FedAvg):
    """FedAvg whose aggregate adds the average into the old global tensors (a contract breach)."""

    def aggregate(self, round_idx, replies):
        old = self.global_state
        metrics = super().aggregate(round_idx, replies)
        for before, after in zip(old, self.global_state):
            before.copy_(after)
        return metrics


class BadFlag(FedAvg):
    models_mixture = "no"


def test_contract_problems_name_the_missing_hook_and_bad_flags():
    assert contract_problems(Plain) == ["missing the required hook(s) component_outputs"]
    assert contract_problems(FedAvg) == []
    assert contract_problems(BadFlag) == ["models_mixture = 'no' is not a bool"]
    assert "not a fedgmi.federated.Strategy subclass" in contract_problems(int)[0]


def test_check_strategy_refuses_a_class_missing_a_hook_in_one_line():
    with pytest.raises(ConfigError, match="component_outputs") as err:
        check_strategy(Plain)
    assert "\n" not in str(err.value)


def test_validate_refuses_a_plain_strategy_subclass_in_one_line(capsys):
    code = main(["validate", "--config", str(ROOT / "configs" / "pm_digits.yaml"),
                 "--algorithm", f"{__name__}.Plain"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "algorithm = " in err[0] and "Plain: missing the required hook(s) component_outputs" in err[0]


def test_check_strategy_catches_an_aggregate_that_changes_the_old_state_in_place(digits_base):
    from tests.helpers import digits_scenario
    with pytest.raises(ContractError, match="in place"):
        check_strategy(InPlace(local_epochs=1), digits_scenario(digits_base, num_clients=3))


def test_check_strategy_passes_fedavg_and_leaves_the_instance_untouched(digits_base):
    from tests.helpers import digits_scenario
    fedavg = FedAvg(local_epochs=1)
    row = check_strategy(fedavg, digits_scenario(digits_base, num_clients=3))
    assert 0.0 <= row["client_accuracy_mean"] <= 1.0
    assert not hasattr(fedavg, "spec")  # checked on copies, never set up itself
