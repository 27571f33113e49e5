"""The client/server contract: messages check themselves where they are made."""

import pytest
import torch

from fedgmi.federated.messages import ClientReply, ClientTask, ContractError, derive_seed


def test_derived_seeds_are_deterministic_and_distinct():
    seeds = {derive_seed(0, r, c) for r in range(20) for c in range(50)}
    assert len(seeds) == 1000
    assert derive_seed(3, 4, 5) == derive_seed(3, 4, 5) != derive_seed(4, 4, 5)


def test_byte_counts_are_exact():
    task = ClientTask(0, 1, 2, (torch.zeros(10), torch.zeros(5, dtype=torch.float16)))
    assert task.bytes_down == 10 * 4 + 5 * 2
    reply = ClientReply(1, 7, torch.zeros(3), (torch.zeros(10), None, torch.zeros(2)))
    assert reply.bytes_up == (10 + 2) * 4 + 3 * 4
    with_stats = ClientReply(1, 7, torch.zeros(1), (torch.zeros(10),), statistics={"u": torch.zeros(3)})
    assert with_stats.bytes_up == 10 * 4 + 4 + 3 * 4


def test_a_reply_made_from_its_task_carries_the_expected_sizes():
    task = ClientTask(0, 3, 9, (torch.zeros(10), torch.zeros(4)), algorithm="FedX")
    reply = task.reply(5, (torch.ones(10), None), [2.0, 0.0], {"cross_entropy": 0.5})
    assert reply.expected_sizes == (10, 4) and reply.algorithm == "FedX" and reply.client_id == 3
    one_up = ClientTask(0, 3, 9, (torch.zeros(10), torch.zeros(10)), upload_sizes=(10,))
    assert one_up.reply(5, (torch.ones(10),), [5.0]).expected_sizes == (10,)


@pytest.mark.parametrize("updates, weights, words", [
    ((torch.ones(10), None), [1.0], "updates has 2 entries but aggregation_weights has shape (1,)"),
    ((torch.ones(10),), [1.0], "updates has 1 entries but the task expects 2"),
    ((torch.ones(9), None), [1.0, 1.0], "updates[0] has shape (9,) but its global vector has 10 entries"),
    ((torch.ones(10), torch.ones(2, 2)), [1.0, 1.0], "updates[1] has shape (2, 2)"),
    ((torch.ones(10), None), [-1.0, 1.0], "must be finite and >= 0"),
    ((torch.ones(10), None), [float("nan"), 1.0], "must be finite and >= 0"),
])
def test_a_malformed_reply_is_refused_naming_algorithm_field_and_sizes(updates, weights, words):
    task = ClientTask(0, 3, 9, (torch.zeros(10), torch.zeros(4)), algorithm="FedX")
    with pytest.raises(ContractError) as err:
        task.reply(5, updates, weights)
    message = str(err.value)
    assert message.startswith("FedX: ClientReply.") and words in message and "\n" not in message


def test_a_malformed_task_is_refused():
    with pytest.raises(ContractError, match="global_state\\[0\\] has shape \\(2, 5\\)"):
        ClientTask(0, 1, 2, (torch.zeros(2, 5),), algorithm="FedX")
    with pytest.raises(ContractError, match="must be >= 0"):
        ClientTask(-1, 1, 2, ())
