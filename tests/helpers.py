"""Small real-data builders shared by tests (digits scenario, a small FedGMI)."""

from __future__ import annotations

import lightning

from fedgmi.algorithms.gmi import FedGMI
from fedgmi.data import ScenarioConfig, build_scenario
from fedgmi.federated.strategy import ProblemSpec
from fedgmi.models import ComponentVAE


def digits_scenario(base, num_clients: int = 6, seed: int = 3):
    """A PM scenario on scikit-learn's digits (K = 3 rotations), 100-140 samples per client."""
    cfg = ScenarioConfig(dataset="digits", num_clients=num_clients, samples_per_client=(100, 140), seed=seed)
    return build_scenario(cfg, base=base)


def small_component(shape):
    return ComponentVAE(shape, hidden_dims=(32,), latent_dim=4)


def make_fedgmi(scenario, initialize: bool = True, fabric: lightning.Fabric | None = None, **kw) -> FedGMI:
    """A set-up FedGMI with small VAEs (on the CPU in 32-true unless ``fabric`` is given),
    topic-initialised unless told otherwise."""
    kw = {"topic_clusters": 12, "topic_restarts": 3, **kw}
    strategy = FedGMI(component=small_component, **kw)
    spec = ProblemSpec(scenario.image_shape, scenario.num_components, scenario.num_classes,
                       len(scenario.clients))
    strategy.setup(spec, fabric or lightning.Fabric(accelerator="cpu", devices=1), seed=0)
    if initialize:
        run_initialize(strategy, scenario.clients)
    return strategy


def run_initialize(strategy, clients):
    """The strategy's initialisation stage as the loop runs it (client states stored)."""
    init = strategy.initialize(clients)
    strategy.client_state.update(init.client_states)
    return init


def run_client(strategy, task, data):
    """One client update as the loop runs it: from the client's stored state, storing its new
    state; returns the reply."""
    reply, state = strategy.client_update(task, data, strategy.client_state.get(task.client_id, {}))
    strategy.client_state[task.client_id] = state
    return reply
