"""The one client worker: settings checked before any work, weighted local training, no DDP."""

import lightning
import pytest
import torch
from torch.nn.utils import parameters_to_vector

from fedgmi.errors import ConfigError
from fedgmi.federated.worker import (
    ClientWorker,
    LocalTraining,
    NonFiniteLossError,
    copy_into_parameters,
    initial_vectors,
)
from fedgmi.models.heads import weighted_cross_entropy


def optimizer(**kw):
    return lambda params: torch.optim.Adam(params, **kw)


@pytest.mark.parametrize("kw, key", [
    ({"local_epochs": 0}, "algorithm.init_args.local_epochs"),
    ({"batch_size": 2.5}, "algorithm.init_args.batch_size"),
    ({"weight_floor": 1.0}, "algorithm.init_args.weight_floor"),
    ({"optimizer": optimizer(lr=-1.0)}, "algorithm.init_args.optimizer: Invalid learning rate: -1.0"),
    ({"optimizer": optimizer(lr=float("nan"))}, "algorithm.init_args.optimizer: Invalid learning rate: nan"),
    ({"optimizer": optimizer(betas=(1.5, 0.9))}, "algorithm.init_args.optimizer: Invalid beta"),
])
def test_local_training_settings_are_checked_before_any_work(kw, key):
    with pytest.raises(ConfigError, match=key.replace("(", "\\(")):
        LocalTraining(**kw)


def test_copy_into_parameters_leaves_the_vector_alone_and_checks_the_size():
    module = torch.nn.Linear(3, 2)
    vec = torch.arange(8, dtype=torch.float32)
    copy_into_parameters(vec, module.parameters())
    assert torch.equal(parameters_to_vector(module.parameters()), vec)
    with torch.no_grad():
        module.weight.add_(1.0)
    assert torch.equal(vec, torch.arange(8, dtype=torch.float32))  # the server's copy is untouched
    with pytest.raises(ValueError, match="9 entries, the parameters 8"):
        copy_into_parameters(torch.zeros(9), module.parameters())


def test_initial_vectors_are_seeded_and_distinct():
    a, b = initial_vectors(lambda: torch.nn.Linear(4, 3), 2, seed=5), initial_vectors(lambda: torch.nn.Linear(4, 3), 2, 5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], a[1])


def make_worker(**kw):
    fabric = lightning.Fabric(accelerator="cpu", devices=1)
    return ClientWorker(fabric, torch.nn.Linear(2, 2), LocalTraining(**{"batch_size": 4, **kw}))


def ce_loss(model, x, y, w, norm, gen):
    ce = weighted_cross_entropy(model(x), y, w, norm)
    return ce, ce.detach()


def test_worker_module_is_raw_and_training_skips_samples_under_the_floor():
    worker = make_worker(local_epochs=3, weight_floor=0.5)
    assert type(worker.module) is torch.nn.Linear  # the raw module, never a DDP wrapper
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 2, generator=gen), torch.randint(0, 2, (12,), generator=gen)
    theta = torch.zeros(6)
    w_all = torch.ones(12)
    w_half = torch.cat([torch.ones(6), torch.full((6,), 0.1)])  # the last 6 fall under the floor
    kept_only = make_worker(local_epochs=3, weight_floor=0.5)
    a, _, _ = worker.train(theta, x, y, w_half, torch.Generator().manual_seed(1), ce_loss)
    b, _, _ = kept_only.train(theta, x[:6], y[:6], w_all[:6], torch.Generator().manual_seed(1), ce_loss)
    assert torch.equal(a, b) and not torch.equal(a, theta) and torch.equal(theta, torch.zeros(6))


def test_worker_outputs_stack_every_vector_and_a_nan_loss_is_named():
    worker = make_worker()
    state = [torch.zeros(6), torch.ones(6)]
    out = worker.outputs(state, torch.ones(5, 2), lambda m, xb: m(xb), chunk=2)
    assert out.shape == (5, 2, 2) and torch.equal(out[:, 0], torch.zeros(5, 2))
    assert torch.equal(out[:, 1], torch.full((5, 2), 3.0))
    bad = torch.full((6,), float("nan"))
    with pytest.raises(NonFiniteLossError, match="component 2, local epoch 0"):
        worker.train(bad, torch.ones(4, 2), torch.zeros(4, dtype=torch.long), torch.ones(4),
                     torch.Generator().manual_seed(0), ce_loss, "component 2")


def test_no_sample_above_the_floor_returns_the_model_untrained():
    worker = make_worker(weight_floor=0.5)
    theta = torch.arange(6, dtype=torch.float32)
    new, loss, _ = worker.train(theta, torch.ones(3, 2), torch.zeros(3, dtype=torch.long), torch.full((3,), 1e-30),
                             torch.Generator().manual_seed(0), ce_loss)
    assert torch.equal(new, theta) and float(loss.sum()) == 0.0 and worker.optimizer_steps == 0


def test_worker_counts_steps_and_sample_passes():
    worker = make_worker(local_epochs=2, batch_size=4)
    worker.train(torch.zeros(6), torch.ones(10, 2), torch.zeros(10, dtype=torch.long), torch.ones(10),
                 torch.Generator().manual_seed(0), ce_loss)
    assert worker.optimizer_steps == 2 * 3 and worker.samples_trained == 2 * 10


@pytest.mark.parametrize("fused", [False, True])
def test_a_per_client_optimizer_state_continues_where_the_client_left_it(fused):
    worker = make_worker(local_epochs=1, batch_size=4, optimizer_state="per_client",
                         optimizer=lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=fused))
    x, y, w = torch.randn(8, 2, generator=torch.Generator().manual_seed(3)), torch.zeros(8, dtype=torch.long), torch.ones(8)
    first = worker.train(torch.zeros(6), x, y, w, torch.Generator().manual_seed(0), ce_loss, client_state={}, key="optimizer.1")
    assert sorted(first.optimizer_state) == ["optimizer.1.exp_avg", "optimizer.1.exp_avg_sq", "optimizer.1.step"]
    assert first.optimizer_state["optimizer.1.exp_avg"].shape == (6,)
    assert first.optimizer_state["optimizer.1.step"].tolist() == [2.0, 2.0]  # 2 steps, 2 parameters
    second = worker.train(first.theta, x, y, w, torch.Generator().manual_seed(0), ce_loss,
                          client_state=first.optimizer_state, key="optimizer.1")
    assert second.optimizer_state["optimizer.1.step"].tolist() == [4.0, 4.0]
    fresh = make_worker(local_epochs=1, batch_size=4, optimizer=lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=fused))
    restarted = fresh.train(first.theta, x, y, w, torch.Generator().manual_seed(0), ce_loss)
    assert restarted.optimizer_state == {} and not torch.equal(restarted.theta, second.theta)
