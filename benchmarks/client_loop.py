"""Which fast client loop: one reusable worker model, or the K components vectorised with
``torch.func.functional_call`` and ``vmap``? Prints JSON.

    python benchmarks/client_loop.py                 # real MNIST clients (FEDGMI_DATA_DIR)
    python benchmarks/client_loop.py --head cnn      # configs/pm_mnist_paper.yaml's CNN heads

Both run the local training of one FedGMI VAE round (after ``--warmup_rounds`` topic-model
rounds, so the responsibilities are those of a real run) over the same clients:

- ``worker`` (what fedgmi does): :meth:`FedGMI.client_update`: the components one after
  another in one reusable model, component k on the samples with r_ik >= ``weight_floor``;
- ``vmap``: the K components' parameters stacked into (K, ...) leaves, one
  ``vmap(functional_call(component.loss))`` over K per mini-batch of the client's whole data
  with weights r[:, k] (vmap needs one batch for all K, so no sample can be skipped), one
  fused Adam over the stacked leaves (Adam is element-wise, so this is K independent Adams).
  The same E-step, proportions, epochs and batch size.

Keys: ``seconds`` of each, ``steps`` (optimizer steps), ``samples_trained`` (sample passes
summed over components), ``vmap_over_worker_seconds`` (> 1: the worker is faster).
"""

from __future__ import annotations

import argparse
import json
import time

import throughput  # benchmarks/throughput.py: the same scenario, strategy and warm-up
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from fedgmi.algorithms.gmi import FedGMI
from fedgmi.federated.responsibilities import estimate_proportions
from fedgmi.federated.worker import copy_into_parameters


class _Loss(nn.Module):
    """``forward`` = the component's weighted loss, so that functional_call can call it."""

    def __init__(self, component: nn.Module) -> None:
        super().__init__()
        self.component = component

    def forward(self, x, y, w, norm, head_w):
        neg_elbo, ce = self.component.loss(x, y, w, norm, None, head_w)
        return neg_elbo + ce


def vmap_client(strategy: FedGMI, task, client) -> tuple[int, int]:
    """One client's E-step and vectorised training of all K components; returns (steps,
    sample passes)."""
    x, y = client.x_train, client.y_train
    log_px, _ = strategy.component_outputs(x, state=task.global_state, classes=False)
    _, r = estimate_proportions(log_px, strategy.client_proportions(task.client_id), strategy.proportion_iters)
    modules = []
    for theta in task.global_state:
        module = _Loss(strategy.build_component())
        copy_into_parameters(theta, module.parameters())
        modules.append(module)
    params, buffers = stack_module_state(modules)  # (K, ...) leaves
    base = _Loss(strategy.build_component()).to("meta")
    optimizer = torch.optim.Adam(params.values(), lr=1e-3, fused=True)
    w = r.T.contiguous()  # (K, n)
    norm = w.mean(1)  # (K,)
    head_w = w * (w >= strategy.head_min_responsibility)

    def loss_k(p, b, xb, yb, wb, nk, hb):
        return functional_call(base, (p, b), (xb, yb, wb, nk, hb))

    batched = vmap(loss_k, in_dims=(0, 0, None, None, 0, 0, 0), randomness="different")
    steps = 0
    for _ in range(strategy.training.local_epochs):
        for idx in torch.randperm(len(x)).split(strategy.training.batch_size):
            loss = batched(params, buffers, x[idx], y[idx], w[:, idx], norm, head_w[:, idx]).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
    return steps, len(x) * len(modules) * strategy.training.local_epochs


def worker_round(strategy: FedGMI, scenario, tasks) -> tuple[int, int]:
    """fedgmi's own client loop; returns (steps, sample passes) from the worker's counters."""
    worker = strategy.worker
    steps, samples = worker.optimizer_steps, worker.samples_trained
    throughput.run_fedgmi(strategy, scenario, tasks)
    return worker.optimizer_steps - steps, worker.samples_trained - samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=15)
    parser.add_argument("--samples", type=int, default=250)
    parser.add_argument("--local_epochs", type=int, default=2)
    parser.add_argument("--warmup_rounds", type=int, default=10)
    parser.add_argument("--head", choices=("mlp", "cnn"), default="mlp")
    args = parser.parse_args()
    torch.manual_seed(0)
    scenario, strategy, tasks = throughput.prepare(args)
    priors = {t.client_id: strategy.client_proportions(t.client_id).clone() for t in tasks}
    times = {}
    for name, run in (("worker", lambda ts: worker_round(strategy, scenario, ts)),
                      ("vmap", lambda ts: [sum(v) for v in zip(*(vmap_client(strategy, t, scenario.clients[t.client_id])
                                                                 for t in ts))])):
        strategy.client_state.update({c: {"pi": pi.clone()} for c, pi in priors.items()})  # same start
        run(tasks[:1])  # warm-up client
        started = time.perf_counter()
        counts = run(tasks[1:])
        times[name] = (time.perf_counter() - started, counts)
    print(json.dumps({
        "clients": args.clients, "head": args.head, "torch_threads": torch.get_num_threads(),
        "seconds": {n: t for n, (t, _) in times.items()},
        "steps": {n: c[0] for n, (_, c) in times.items()},
        "samples_trained": {n: c[1] for n, (_, c) in times.items()},
        "vmap_over_worker_seconds": times["vmap"][0] / times["worker"][0],
    }, indent=2))


if __name__ == "__main__":
    main()
