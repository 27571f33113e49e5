import numpy as np
import pytest
import torch

from fedgmi.federated.aggregation import aggregate_components, weighted_average


def test_weighted_average_matches_numpy():
    rng = np.random.default_rng(0)
    ups = [rng.normal(size=(4, 3)) for _ in range(5)]
    w = rng.random(5)
    expected = np.einsum("c,cij->ij", w / w.sum(), np.stack(ups))
    got = weighted_average([torch.tensor(u) for u in ups], w.tolist())
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_per_component_aggregation_matches_numpy_and_skips_missing_updates():
    rng = np.random.default_rng(1)
    theta = [torch.tensor(rng.normal(size=6), dtype=torch.float32) for _ in range(3)]
    deltas = [[torch.tensor(rng.normal(size=6), dtype=torch.float32) for _ in range(3)] for _ in range(4)]
    weights = rng.random((4, 3)).tolist()
    deltas[2][1] = None  # client 2 did not send component 1
    for client in deltas:
        client[2] = None  # nobody sent component 2
    new = aggregate_components(theta, deltas, weights)
    w0 = np.array([weights[c][0] for c in range(4)])
    exp0 = theta[0].numpy() + sum(w0[c] * deltas[c][0].numpy() for c in range(4)) / w0.sum()
    senders = [0, 1, 3]
    w1 = np.array([weights[c][1] for c in senders])
    exp1 = theta[1].numpy() + sum(w * deltas[c][1].numpy() for w, c in zip(w1, senders)) / w1.sum()
    np.testing.assert_allclose(new[0].numpy(), exp0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new[1].numpy(), exp1, rtol=1e-5, atol=1e-6)
    assert torch.equal(new[2], theta[2])


@pytest.mark.parametrize("weights", [[], [1.0, -1.0], [0.0, 0.0]])
def test_bad_weights_raise(weights):
    with pytest.raises(ValueError):
        weighted_average([torch.zeros(2)] * max(len(weights), 1) if weights else [], weights)
