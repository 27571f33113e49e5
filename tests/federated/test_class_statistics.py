import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgmi.federated.class_statistics import ClassStatistics


def _split(n, parts, gen):
    cuts = sorted(torch.randint(0, n + 1, (parts - 1,), generator=gen).tolist())
    return [slice(a, b) for a, b in zip([0, *cuts], [*cuts, n])]


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 60), st.integers(1, 5), st.integers(1, 4), st.integers(0, 10**6))
def test_pooled_statistics_equal_the_statistics_of_the_pooled_data(n, parts, num_classes, seed):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, generator=gen, dtype=torch.float64) * 3 + 1
    y = torch.randint(0, num_classes, (n,), generator=gen)
    pooled = ClassStatistics.pooled([ClassStatistics.of(z[s], y[s], num_classes) for s in _split(n, parts, gen)])
    whole = ClassStatistics.of(z, y, num_classes)
    torch.testing.assert_close(pooled.counts, whole.counts)
    torch.testing.assert_close(pooled.means, whole.means)
    torch.testing.assert_close(pooled.variances, whole.variances)


def test_statistics_are_the_class_means_and_population_variances():
    z = torch.tensor([[0.0, 1.0], [2.0, 3.0], [10.0, -1.0]])
    stats = ClassStatistics.of(z, torch.tensor([1, 1, 0]), 3)
    assert stats.counts.tolist() == [1.0, 2.0, 0.0]
    torch.testing.assert_close(stats.means, torch.tensor([[10.0, -1.0], [1.0, 2.0], [0.0, 0.0]]))
    torch.testing.assert_close(stats.variances, torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]))


def test_flat_round_trip_and_size():
    stats = ClassStatistics.of(torch.randn(20, 4), torch.randint(0, 3, (20,)), 3)
    flat = stats.flat()
    assert flat.shape == (3 + 2 * 3 * 4,)
    back = ClassStatistics.from_flat(flat, 3)
    torch.testing.assert_close(back.means, stats.means)
    with pytest.raises(ValueError, match="does not fit"):
        ClassStatistics.from_flat(flat[:-1], 3)


def test_bad_shapes_and_counts_are_refused():
    with pytest.raises(ValueError, match="must be"):
        ClassStatistics(torch.ones(2), torch.zeros(3, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=">= 0"):
        ClassStatistics(-torch.ones(2), torch.zeros(2, 4), torch.zeros(2, 4))
