"""Local-training throughput of fedgmi against the compute floor and a naive implementation,
and peak memory against the number of simulated clients. Prints JSON.

    python benchmarks/throughput.py                   # real MNIST clients (FEDGMI_DATA_DIR)
    python benchmarks/throughput.py --head cnn        # configs/pm_mnist_paper.yaml's CNN heads

The work timed: the local training of one FedGMI VAE round (E-step, proportions, weighted
training of K = 3 components: VAE 784-200-10 plus a classifier head) of ``--clients`` MNIST
clients, after ``--warmup_rounds`` topic-model rounds over them (as ``configs/pm_mnist_paper.yaml``
does, so that the responsibilities are those of a real run). Ways, each timed ``--repeats``
times interleaved after one warm-up client (the fastest repeat counts, as in timeit):

- ``fedgmi``: :meth:`FedGMI.client_update` as the federated loop calls it;
- ``floor``: the same forward and backward passes on the same tensors (same seed, proportions,
  samples, batches, weights and fused Adam steps) on plain modules, with no federated
  machinery (no tasks, replies, Fabric or reusable worker); its updates are checked
  against fedgmi's (``fedgmi_vs_floor_max_abs_update_diff``, 0.0 when the work is the same);
- ``naive``: as research code typically writes it: a deep copy of the K models per client, a
  DataLoader per client (and per component) over the client's images stored as MNIST ships
  them (uint8, converted through PIL and ToTensor on each access, as torchvision's MNIST
  does), the E-step batch by batch, plain Adam per component, every component trained on
  every sample with its weight, the update as a state_dict difference, clients one after
  another; ``naive_tensor_data``: the same over a TensorDataset of float tensors;
  ``naive_same_samples``: that, restricted to the samples fedgmi trains (r_ik >= weight_floor),
  to show where the speed-up comes from.

Keys: ``floor_ratio`` (fedgmi's throughput over the floor's: the floor's seconds over
fedgmi's), ``naive_speedup`` (and ``<variant>_speedup``: the naive way's seconds over fedgmi's),
``memory_ratio_1000_vs_10`` (peak RSS of a 2-round run with 1,000 clients over that with 10,
same total data, 10 clients per round, in fresh processes; the peak is reset after the
imports) and ``memory_growth_ratio_1000_vs_10`` (the same for the growth over the RSS after
the imports), and the raw figures (seconds, sample passes, samples per second, client updates
per second, bytes).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time

import lightning
import torch
from PIL import Image
from torch.nn.utils import parameters_to_vector
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.transforms import ToTensor

from fedgmi.algorithms.gmi import FedGMI
from fedgmi.data import ScenarioConfig, build_scenario
from fedgmi.federated.responsibilities import estimate_proportions
from fedgmi.federated.strategy import ProblemSpec
from fedgmi.federated.worker import copy_into_parameters
from fedgmi.models import ComponentVAE
from fedgmi.models.heads import CNNClassifier, MLPClassifier

DATA_DIR = os.environ.get("FEDGMI_DATA_DIR", "data")


HEADS = {"mlp": MLPClassifier,  # FedGMI's default head
         "cnn": lambda s, y: CNNClassifier(s, y, channels=(8, 16), hidden=64)}  # configs/pm_mnist_paper.yaml's


def make_strategy(scenario, local_epochs: int, warmup_rounds: int = 0, head: str = "mlp") -> FedGMI:
    """FedGMI with VAE 784-200-10 components and ``head`` (``init="random"`` without warm-up)."""
    strategy = FedGMI(component=lambda s: ComponentVAE(s, hidden_dims=(200,), latent_dim=10),
                      classifier=HEADS[head], classifier_sharing="separate", head_min_responsibility=0.99, local_epochs=local_epochs,
                      init="topic" if warmup_rounds else "random", warmup_rounds=warmup_rounds)
    spec = ProblemSpec(scenario.image_shape, scenario.num_components, scenario.num_classes, len(scenario.clients))
    strategy.setup(spec, lightning.Fabric(accelerator="cpu", devices=1), seed=0)
    return strategy


def scenario_of(num_clients: int, samples: int):
    return build_scenario(ScenarioConfig(dataset="mnist", data_dir=DATA_DIR, download=False, num_clients=num_clients,
                                         samples_per_client=(samples, samples), seed=0))


def run_rounds(strategy: FedGMI, scenario, rounds: range, ids_of) -> None:
    """Plain federated rounds; ``ids_of(round)`` gives the round's clients."""
    for rnd in rounds:
        tasks = strategy.configure_round(rnd, ids_of(rnd))
        strategy.aggregate(rnd, run_fedgmi(strategy, scenario, tasks))


def timed(fn, *args) -> tuple[float, object]:
    started = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - started, out


# ---------------------------------------------------------------------------- the three ways
def run_fedgmi(strategy: FedGMI, scenario, tasks) -> list:
    """The tasks' client updates as the federated loop runs them (each client's state stored)."""
    replies = []
    for task in tasks:
        reply, state = strategy.client_update(task, scenario.clients[task.client_id],
                                              strategy.client_state.get(task.client_id, {}))
        strategy.client_state[task.client_id] = state
        replies.append(reply)
    return replies


def floor_client(strategy: FedGMI, modules, optimizers, task, client, prior) -> tuple[int, list]:
    """The passes of FedGMI.client_update (same seed, prior, batches and weights) on plain
    modules; returns (samples trained, the K updates or None)."""
    gen = torch.Generator().manual_seed(task.seed)
    x, y = client.x_train, client.y_train
    with torch.no_grad():
        for module, theta in zip(modules, task.global_state):
            copy_into_parameters(theta, module.parameters())
        log_px = torch.stack([torch.cat([m.vae.log_likelihood(xb, "elbo", 1, gen) for xb in x.split(2048)])
                              for m in modules], dim=1)
    _, r = estimate_proportions(log_px, prior, strategy.proportion_iters)
    trained, updates = 0, []
    for k, (module, optimizer) in enumerate(zip(modules, optimizers)):
        if r[:, k].sum() < strategy.min_mass:
            updates.append(None)
            continue
        keep = r[:, k] >= strategy.training.weight_floor
        xk, yk, wk = x[keep], y[keep], r[keep, k]
        norm = wk.mean()
        head_w = wk * (wk >= strategy.head_min_responsibility)
        optimizer.state.clear()
        for _ in range(strategy.training.local_epochs):
            for idx in torch.randperm(len(xk), generator=gen).split(strategy.training.batch_size):
                neg_elbo, ce = module.loss(xk[idx], yk[idx], wk[idx], norm, gen, head_w[idx])
                optimizer.zero_grad(set_to_none=True)
                (neg_elbo + ce).backward()
                optimizer.step()
            trained += len(xk)
        updates.append(parameters_to_vector(module.parameters()).detach() - task.global_state[k])
    return trained, updates


class ImageDataset(Dataset):
    """A client's images stored as MNIST ships them (uint8, H x W) and converted on every access
    through PIL and ``ToTensor``, as torchvision's MNIST does; yields the same float tensors
    as ``x`` (pixels are multiples of 1/255)."""

    def __init__(self, x: torch.Tensor, *rest: torch.Tensor, image_shape) -> None:
        self.images = (x * 255).round().to(torch.uint8).reshape(-1, *image_shape[-2:]).numpy()
        self.rest, self.to_tensor = rest, ToTensor()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image = self.to_tensor(Image.fromarray(self.images[i], mode="L")).reshape(-1)
        return (image, *(t[i] for t in self.rest))


NAIVE_DATA = {"torchvision": lambda x, *rest, shape: ImageDataset(x, *rest, image_shape=shape),
              "tensor": lambda x, *rest, shape: TensorDataset(x, *rest)}


def naive_client(globals_, client, prior, strategy: FedGMI, seed: int, data: str, same_samples: bool) -> int:
    """Research-code style: model copies, DataLoaders over a ``NAIVE_DATA[data]`` dataset,
    the E-step batch by batch, every component on every sample (``same_samples``: on the
    samples fedgmi trains); returns sample passes."""
    torch.manual_seed(seed)
    shape = strategy.spec.image_shape
    models = [copy.deepcopy(m) for m in globals_]  # a model copy per client and component
    loader = DataLoader(NAIVE_DATA[data](client.x_train, client.y_train, shape=shape), batch_size=strategy.training.batch_size)
    with torch.no_grad():
        log_px = torch.cat([torch.stack([m.vae.log_likelihood(xb, "elbo", 1) for m in models], 1)
                            for xb, _ in loader])
    _, r = estimate_proportions(log_px, prior, strategy.proportion_iters)
    trained = 0
    for k, model in enumerate(models):
        if same_samples and r[:, k].sum() < strategy.min_mass:
            continue
        keep = r[:, k] >= (strategy.training.weight_floor if same_samples else 0.0)
        dataset = NAIVE_DATA[data](client.x_train[keep], client.y_train[keep], r[keep, k], shape=shape)
        norm = r[keep, k].mean()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(strategy.training.local_epochs):
            for xb, yb, wb in DataLoader(dataset, batch_size=strategy.training.batch_size, shuffle=True):
                neg_elbo, ce = model.loss(xb, yb, wb, norm, None, wb * (wb >= strategy.head_min_responsibility))
                optimizer.zero_grad()
                (neg_elbo + ce).backward()
                optimizer.step()
            trained += len(dataset)
        before = globals_[k].state_dict()
        _ = {name: value - before[name] for name, value in model.state_dict().items()}  # the update
    return trained


NAIVE_VARIANTS = (("naive", "torchvision", False), ("naive_tensor_data", "tensor", False),
                  ("naive_same_samples", "tensor", True))  # (name, NAIVE_DATA key, same_samples)


def max_update_diff(replies, floor_updates) -> float:
    """Largest absolute difference between fedgmi's and the floor's updates (0: same work)."""
    diffs = [float((a - b).abs().max()) for reply, ups in zip(replies, floor_updates)
             for a, b in zip(reply.updates, ups) if a is not None or b is not None]
    return max(diffs, default=0.0)


def prepare(args):
    """Clients 0..``args.clients`` (``args.samples`` each), FedGMI after ``args.warmup_rounds``
    topic-model rounds over all of them, and the tasks of the next (VAE) round."""
    scenario = scenario_of(args.clients + 1, args.samples)
    strategy = make_strategy(scenario, args.local_epochs, args.warmup_rounds, args.head)
    ids = list(range(args.clients + 1))
    strategy.client_state.update(strategy.initialize(scenario.clients).client_states)
    run_rounds(strategy, scenario, range(args.warmup_rounds), lambda rnd: ids)  # the components specialise
    return scenario, strategy, strategy.configure_round(args.warmup_rounds, ids)


def make_ways(strategy: FedGMI, scenario, priors) -> dict:
    """name -> fn(tasks) for fedgmi, the floor and the naive variants, all from ``priors``."""
    modules = [strategy.build_component() for _ in strategy.global_state]
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-3, fused=True) for m in modules]

    def fedgmi_way(tasks):
        for t in tasks:  # every repeat starts from the same proportions, so does the same work
            strategy.client_state[t.client_id] = {"pi": priors[t.client_id].clone()}
        return run_fedgmi(strategy, scenario, tasks)

    ways = {"fedgmi": fedgmi_way,
            "floor": lambda tasks: [floor_client(strategy, modules, optimizers, t, scenario.clients[t.client_id],
                                                 priors[t.client_id]) for t in tasks]}
    for name, data, same in NAIVE_VARIANTS:
        ways[name] = lambda tasks, d=data, s=same: sum(
            naive_client(modules, scenario.clients[t.client_id], priors[t.client_id], strategy, t.seed, d, s)
            for t in tasks)
    return ways


def time_ways(ways: dict, tasks, repeats: int) -> dict:
    """name -> (seconds, output) of the fastest of ``repeats`` interleaved runs (as timeit),
    after one untimed warm-up client (``tasks[0]``)."""
    for way in ways.values():
        way(tasks[:1])
    results = {}
    for _ in range(repeats):
        for name, way in ways.items():
            t, out = timed(way, tasks[1:])
            results[name] = min(results.get(name, (t, out)), (t, out), key=lambda r: r[0])
    return results


def throughput(args) -> dict:
    scenario, strategy, tasks = prepare(args)
    priors = {t.client_id: strategy.client_proportions(t.client_id).clone() for t in tasks}
    results = time_ways(make_ways(strategy, scenario, priors), tasks, args.repeats)
    floor_samples = sum(n for n, _ in results["floor"][1])
    seconds = {name: t for name, (t, _) in results.items()}
    samples = {"fedgmi": floor_samples, "floor": floor_samples,
               **{name: results[name][1] for name, _, _ in NAIVE_VARIANTS}}
    return {
        "clients": args.clients, "head": args.head, "samples_per_client": args.samples,
        "local_epochs": args.local_epochs, "warmup_rounds": args.warmup_rounds, "repeats": args.repeats,
        "seconds": seconds, "samples_trained": samples,
        "samples_per_s": {name: samples[name] / seconds[name] for name in seconds},
        "client_updates_per_s": {name: args.clients / seconds[name] for name in seconds},
        "fedgmi_vs_floor_max_abs_update_diff": max_update_diff(results["fedgmi"][1],
                                                               [u for _, u in results["floor"][1]]),
        "floor_ratio": seconds["floor"] / seconds["fedgmi"],
        **{f"{name}_speedup": seconds[name] / seconds["fedgmi"] for name, _, _ in NAIVE_VARIANTS},
    }


# ---------------------------------------------------------------------------- memory
def _status_bytes(field: str) -> int:
    """A ``/proc/self/status`` field (VmRSS, VmHWM) in bytes (Linux)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def memory_child(num_clients: int, total: int, per_round: int, head: str) -> None:
    """Two rounds of ``per_round`` clients out of ``num_clients`` (``total`` samples in all);
    prints the peak RSS (VmHWM, reset after the imports) and the RSS at that reset, in bytes."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset VmHWM to the current RSS: the imports' transient peak is not ours
    baseline = _status_bytes("VmRSS")
    scenario = scenario_of(num_clients, total // num_clients)
    strategy = make_strategy(scenario, 1, head=head)
    run_rounds(strategy, scenario, range(2), lambda rnd: sorted(
        torch.randperm(num_clients, generator=torch.Generator().manual_seed(rnd))[:per_round].tolist()))
    print(json.dumps({"peak_rss_bytes": _status_bytes("VmHWM"), "rss_after_imports_bytes": baseline}))


def memory(args) -> dict:
    out = {}
    for n in (10, 100, 1000):
        done = subprocess.run([sys.executable, __file__, "--memory_child", str(n), "--total", str(args.total),
                               "--head", args.head], capture_output=True, text=True, check=True)
        out[n] = json.loads(done.stdout.strip().splitlines()[-1])
    growth = {n: v["peak_rss_bytes"] - v["rss_after_imports_bytes"] for n, v in out.items()}
    return {
        "memory": {str(n): {**v, "growth_bytes": growth[n]} for n, v in out.items()},
        "memory_total_samples": args.total,
        "memory_ratio_1000_vs_10": out[1000]["peak_rss_bytes"] / out[10]["peak_rss_bytes"],
        "memory_ratio_100_vs_10": out[100]["peak_rss_bytes"] / out[10]["peak_rss_bytes"],
        "memory_growth_ratio_1000_vs_10": growth[1000] / growth[10],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=15)
    parser.add_argument("--samples", type=int, default=250)
    parser.add_argument("--local_epochs", type=int, default=2)
    parser.add_argument("--warmup_rounds", type=int, default=10,
                        help="topic-model rounds before the timed VAE round (0: random init)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each way (the fastest counts)")
    parser.add_argument("--head", choices=sorted(HEADS), default="mlp",
                        help="classifier head: FedGMI's default MLP or configs/pm_mnist_paper.yaml's CNN")
    parser.add_argument("--total", type=int, default=6000, help="total samples of the memory runs")
    parser.add_argument("--memory_child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.total, per_round=10, head=args.head)
        return
    torch.manual_seed(0)
    report = {"torch_threads": torch.get_num_threads(), **throughput(args), **memory(args)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
