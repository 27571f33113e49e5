import torch

from fedgmi.types import ClientReply, ClientTask, derive_seed


def test_derived_seeds_are_deterministic_and_distinct():
    seeds = {derive_seed(0, r, c) for r in range(20) for c in range(50)}
    assert len(seeds) == 1000
    assert derive_seed(3, 4, 5) == derive_seed(3, 4, 5) != derive_seed(4, 4, 5)


def test_byte_counts_are_exact():
    task = ClientTask(0, 1, 2, (torch.zeros(10), torch.zeros(5, dtype=torch.float16)))
    assert task.bytes_down == 10 * 4 + 5 * 2
    reply = ClientReply(1, 7, torch.zeros(3), (torch.zeros(10), None, torch.zeros(2)))
    assert reply.bytes_up == (10 + 2) * 4 + 3 * 4
