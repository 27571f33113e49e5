"""The one client worker every parameter-vector algorithm trains with.

A simulated federation must not hold one model per client (memory grows with clients x K), so
each process keeps ONE reusable module and optimizer, set up with Fabric (precision plugin,
device; never DDP: ranks train different clients). For every (client, component) the worker
copies the received (P,) parameter vector into the module's own storage, trains it on the
client's data with per-sample training weights, and reads it back as a vector.

The local-training settings shared by every algorithm (local epochs, batch size, optimizer,
weight floor) are one validated dataclass, :class:`LocalTraining`.

One local update of component k (FedGMI step 3; with all-ones weights, FedAvg's ClientUpdate,
McMahan et al. 2017, Algorithm 1): samples with training weight r_ik below ``weight_floor`` are
skipped; for ``local_epochs`` epochs, a seeded permutation is cut into batches of
``batch_size``, and each batch's loss is sum_i r_i l_i / (B * mean_i r_i) over the client's
kept samples (an unbiased estimate of the r-weighted mean loss; paper: silent, here: this
normalisation). The optimizer starts from a fresh state for every client and component
(``optimizer_state="fresh"``), or from the state that client's last update of that component
left (``"per_client"``, as the official codes of FedEM, FedSoft and FedGMM do; the state then
lives in the client's state: 2P floats per component for Adam).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import lightning
import torch
from torch.nn.utils import parameters_to_vector

from fedgmi.errors import ConfigError
from fedgmi.validation import check_choice, check_int, check_number

OptimizerFactory = Callable[[Iterable], torch.optim.Optimizer]
#: ``loss(module, x, y, weights, norm, generator) -> (objective, reported)``: the scalar to
#: minimise and the (T,) loss terms to report (nats), on one batch.
LossFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]

#: How the local optimizer starts each client update (see the module docstring).
OPTIMIZER_STATES = ("fresh", "per_client")


class NonFiniteLossError(ArithmeticError):
    """A client's local training produced a NaN or Inf loss (numerical trouble: the run stops)."""


def default_optimizer() -> OptimizerFactory:
    """Adam(lr=1e-3, fused=True) (fused: measured 7.3 vs 11.9 ms a step on the MNIST VAE on CPU)."""
    return partial(torch.optim.Adam, lr=1e-3, fused=True)


@dataclass
class LocalTraining:
    """Local-training settings shared by every algorithm.

    Attributes:
        local_epochs: Passes over the client's (kept) data per trained component per round.
        batch_size: Local mini-batch size.
        optimizer: Builds the local optimizer from parameters (``None``: Adam, lr 1e-3, fused).
        weight_floor: Samples with training weight below this are skipped, in [0, 1).
        optimizer_state: "fresh" (a new optimizer state for every client update) or
            "per_client" (each client keeps its optimizer's state per component between
            rounds, in its client state).

    Raises:
        ConfigError: a value out of range, or an optimizer that refuses its hyperparameters
            (e.g. ``lr = -1`` or NaN), named by its ``algorithm.init_args`` key.
    """

    local_epochs: int = 5
    batch_size: int = 64
    optimizer: OptimizerFactory | None = None
    weight_floor: float = 1e-3
    optimizer_state: str = "fresh"

    def __post_init__(self) -> None:
        check_choice("algorithm.init_args.optimizer_state", self.optimizer_state, OPTIMIZER_STATES)
        check_int("algorithm.init_args.local_epochs", self.local_epochs, 1)
        check_int("algorithm.init_args.batch_size", self.batch_size, 1)
        check_number("algorithm.init_args.weight_floor", self.weight_floor, 0, 1, high_open=True)
        self.optimizer = self.optimizer or default_optimizer()
        try:  # the optimizer checks its own hyperparameters when built: do it before any work
            self.optimizer([torch.nn.Parameter(torch.zeros(1))])
        except (ValueError, TypeError, RuntimeError) as err:
            raise ConfigError(f"algorithm.init_args.optimizer: {err}") from None


@torch.no_grad()
def copy_into_parameters(vec: torch.Tensor, parameters: Iterable[torch.nn.Parameter]) -> None:
    """Copy a (P,) vector into the parameters' own storage.

    Unlike ``torch.nn.utils.vector_to_parameters``, which rebinds each ``param.data`` to a
    view of ``vec`` (so that training would then write into ``vec``, the server's copy), this
    leaves ``vec`` untouched and keeps the optimizer's references valid.

    Raises:
        ValueError: ``vec`` has another size than the parameters together.
    """
    offset = 0
    for p in parameters:
        p.copy_(vec[offset:offset + p.numel()].view_as(p))
        offset += p.numel()
    if offset != vec.numel():
        raise ValueError(f"vector has {vec.numel()} entries, the parameters {offset}")


def initial_vectors(build: Callable[[], torch.nn.Module], count: int, seed: int) -> list[torch.Tensor]:
    """``count`` independently initialised (P,) parameter vectors: vector k is ``build()``'s
    parameters after ``torch.manual_seed(seed * 1000 + k)``."""
    vectors = []
    for k in range(count):
        torch.manual_seed(seed * 1000 + k)  # component k's own initial weights
        vectors.append(parameters_to_vector(build().parameters()).detach())
    return vectors


def carried_optimizer_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The "per_client" optimizer states in a client's state (keys ``optimizer...``), to carry
    over for the components the client does not train this round."""
    return {k: v for k, v in state.items() if k.startswith("optimizer")}


class LocalUpdate(NamedTuple):
    """What :meth:`ClientWorker.train` returns."""

    theta: torch.Tensor
    """(P,) the trained parameters."""
    losses: torch.Tensor
    """(T,) float64 last-epoch mean of the reported loss terms per kept sample (nats), CPU."""
    optimizer_state: dict[str, torch.Tensor]
    """The optimizer's state after training, flattened under the given prefix (empty unless
    ``optimizer_state="per_client"``): keep it in the client's state."""


class ClientWorker:
    """One reusable module and optimizer on this rank's device (see the module docstring).

    Args:
        fabric: The run's Fabric (device, precision, autocast, backward).
        module: The module whose parameters the (P,) vectors fill.
        training: The local-training settings.

    Attributes:
        optimizer_steps: Optimizer steps taken so far (all clients and components).
        samples_trained: Sample passes trained so far (kept samples x local epochs).
        total_samples_trained: Class-wide: sample passes of every worker of this process, which
            :func:`counted_client_update` reads around one client update.
    """

    total_samples_trained = 0

    def __init__(self, fabric: lightning.Fabric, module: torch.nn.Module, training: LocalTraining) -> None:
        self.fabric, self.training = fabric, training
        self.optimizer_steps = self.samples_trained = 0
        factory = training.optimizer or default_optimizer()  # set by LocalTraining itself
        if fabric.world_size == 1:
            wrapped, self.optimizer = fabric.setup(module, factory(module.parameters()))
            self.module = wrapped.module
        else:  # never DDP: with several ranks, each trains its own clients
            self.module = fabric.strategy.precision.convert_module(module).to(fabric.device)
            self.optimizer = fabric.setup_optimizers(factory(self.module.parameters()))

    def load(self, theta: torch.Tensor) -> torch.nn.Module:
        """Copy the (P,) vector ``theta`` into the module and return the module."""
        copy_into_parameters(theta, self.module.parameters())
        return self.module

    def vector(self) -> torch.Tensor:
        """(P,) a detached copy of the module's parameters."""
        return parameters_to_vector(self.module.parameters()).detach().clone()

    @torch.no_grad()
    def outputs(self, state: Sequence[torch.Tensor], x: torch.Tensor, forward: Callable,
                chunk: int = 2048) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """``forward(module, x_chunk)`` under every vector of ``state``, chunk by chunk.

        Args:
            state: M (P,) vectors.
            x: (N, D) inputs (on the worker's device).
            forward: Returns a (n, ...) tensor, or a tuple of them, for an (n, D) chunk.

        Returns:
            (N, M, ...) stacked over the vectors (a tuple of such when ``forward`` returns one).
        """
        per_vector: list[Any] = []
        for theta in state:
            module = self.load(theta)
            with self.fabric.autocast():
                parts = [forward(module, xb) for xb in x.split(chunk)]
            if isinstance(parts[0], tuple):
                per_vector.append(tuple(torch.cat(p) for p in zip(*parts)))
            else:
                per_vector.append(torch.cat(parts))
        if per_vector and isinstance(per_vector[0], tuple):
            return tuple(torch.stack(p, dim=1) for p in zip(*per_vector))
        return torch.stack(per_vector, dim=1)

    def train(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor,
              generator: torch.Generator, loss: LossFn, what: str = "model",
              client_state: Mapping[str, torch.Tensor] | None = None, key: str = "optimizer") -> LocalUpdate:
        """Weighted local training from ``theta`` (see the module docstring).

        Args:
            theta: (P,) starting parameters.
            x: (n, D) inputs; y: (n,) labels; weights: (n,) training weights r_i >= 0, or
                (n, K) per-component weights (a sample is kept when any reaches the floor;
                ``loss`` then gets (B, K) weights and the (K,) mean weight as ``norm``).
            generator: The client's seeded generator (batch order, and whatever ``loss`` draws).
            loss: The batch loss (see :data:`LossFn`).
            what: Names the trained model in the error message (e.g. "component 2").
            client_state: The client's state, where a "per_client" optimizer state is kept
                under ``key`` (e.g. "optimizer.2" for component 2).

        Returns:
            A :class:`LocalUpdate`; when no sample reaches the weight floor, ``theta`` itself,
            zeros, and the optimizer state as it was.

        Raises:
            NonFiniteLossError: an epoch's loss is NaN or Inf (checked once per epoch).
        """
        keep = weights >= self.training.weight_floor
        if keep.dim() == 2:  # (n, K) per-component weights: keep a sample any component trains on
            keep = keep.any(1)
        per_client = self.training.optimizer_state == "per_client"
        if not bool(keep.any()):  # nothing to train on: the model is returned as received
            kept = {k: v for k, v in (client_state or {}).items() if per_client and k.startswith(f"{key}.")}
            return LocalUpdate(theta.detach().clone(), torch.zeros(1, dtype=torch.float64), kept)
        module = self.load(theta)
        self.optimizer.state.clear()  # fresh local optimizer state per client and component
        if per_client:
            self._load_optimizer_state(client_state or {}, key)
        xk, yk, wk = x[keep], y[keep], weights[keep]  # (m, D), (m,), (m,)
        norm = wk.mean(0)  # loss = mean_i w_i l_i / mean(w): unbiased weighted mean ((K,) for (n, K) weights)
        total = torch.zeros((), device=xk.device)
        for epoch in range(self.training.local_epochs):
            order = torch.randperm(len(xk), generator=generator, device=xk.device)
            total = torch.zeros((), device=xk.device)
            for idx in order.split(self.training.batch_size):
                with self.fabric.autocast():
                    objective, reported = loss(module, xk[idx], yk[idx], wk[idx], norm, generator)
                self.optimizer.zero_grad(set_to_none=True)
                self.fabric.backward(objective)
                self.optimizer.step()
                total = total + reported.detach() * len(idx)
                self.optimizer_steps += 1
            self.samples_trained += len(xk)
            ClientWorker.total_samples_trained += len(xk)
            if not torch.isfinite(total).all():
                raise NonFiniteLossError(f"{what}, local epoch {epoch}: loss is not finite "
                                         f"({', '.join(f'{v:.4g}' for v in total.reshape(-1).tolist())})")
        saved = self._optimizer_state(key) if per_client else {}
        return LocalUpdate(self.vector(), total.double().cpu().reshape(-1) / max(len(xk), 1), saved)

    def _optimizer_state(self, key: str) -> dict[str, torch.Tensor]:
        """The optimizer's per-parameter state flattened: ``{key.name: (P,) or (#params,)}``
        (tensors of a parameter's shape are concatenated; scalars such as Adam's step stacked)."""
        params = list(self.module.parameters())
        states = [self.optimizer.state.get(p, {}) for p in params]
        out = {}
        for name in sorted(set().union(*states)):
            values = [s.get(name) for s in states]
            if all(isinstance(v, torch.Tensor) and v.shape == p.shape for v, p in zip(values, params)):
                out[f"{key}.{name}"] = torch.cat([v.detach().reshape(-1) for v in values])
            elif all(v is not None for v in values):
                out[f"{key}.{name}"] = torch.stack([torch.as_tensor(v, dtype=torch.float32).reshape(()) for v in values])
        return out

    def _load_optimizer_state(self, saved: Mapping[str, torch.Tensor], key: str) -> None:
        """Restore what :meth:`_optimizer_state` returned (nothing saved: a fresh state)."""
        params = list(self.module.parameters())
        sizes = [p.numel() for p in params]
        defaults = self.optimizer.defaults
        scalars_on_device = bool(defaults.get("fused") or defaults.get("capturable"))  # torch's Adam rule
        for full, flat in saved.items():
            if not full.startswith(f"{key}."):
                continue
            name = full[len(key) + 1:]
            if flat.numel() == sum(sizes):  # per-parameter tensors, concatenated
                values = [(part.reshape(p.shape), p.device) for p, part in zip(params, flat.split(sizes))]
            else:  # one scalar per parameter (e.g. Adam's step)
                values = [(part.reshape(()), p.device if scalars_on_device else "cpu")
                          for p, part in zip(params, flat.unbind())]
            for p, (value, device) in zip(params, values):
                self.optimizer.state[p][name] = value.to(device).clone()


def counted_client_update(strategy, task, data, state):
    """``strategy.client_update(task, data, state)`` with its local compute in the reply: the
    sample passes of every :class:`ClientWorker` it trained (kept samples x local epochs, all
    models, e.g. FedGMI's VAE and its classifiers) as ``reply.metrics["sample_passes"]``.
    Every transport calls client updates through this (in process and on Flower), so the
    server's ``train_sample_passes`` counts the same work either way.

    Returns:
        ``(reply, new_state)`` as the strategy's ``client_update``.
    """
    before = ClientWorker.total_samples_trained
    reply, new_state = strategy.client_update(task, data, state)
    passes = float(ClientWorker.total_samples_trained - before)
    return dataclasses.replace(reply, metrics={**reply.metrics, "sample_passes": passes}), new_state
