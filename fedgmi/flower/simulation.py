"""Flower's simulation engine: many virtual SuperNodes on one machine, one per partition.

:func:`simulate` runs ``flwr.simulation.run_simulation`` with the fedgmi ServerApp and ClientApp;
each virtual node ``partition-id = p`` of ``num-partitions = N`` holds the clients c with
c % N == p (N = the number of clients: one client per node).
"""

from __future__ import annotations

import os
from typing import Any

from fedgmi.flower.runtime import RunSettings


def simulate(run_config: dict[str, Any], num_supernodes: int | None = None, num_cpus: float = 1.0,
             verbose: bool = False) -> None:
    """Run a fedgmi config on Flower's simulation engine (Ray backend).

    Args:
        run_config: The Flower run config (see :mod:`fedgmi.flower.runtime`), e.g.
            ``{"config": "configs/pm_mnist.yaml", "overrides": "--federation.rounds 3"}``.
        num_supernodes: Virtual nodes (default: one per client of the scenario).
        num_cpus: CPUs Ray reserves for each ClientApp run (so at most cores / num_cpus run at
            once).
        verbose: Flower's DEBUG logs.

    Raises:
        ConfigError: a bad run config or fedgmi config (one line).
    """
    from flwr.simulation import run_simulation

    from fedgmi.flower.client_app import make_client_app
    from fedgmi.flower.runtime import client_side
    from fedgmi.flower.server_app import make_server_app

    settings = RunSettings.from_run_config(run_config)  # checked here, before Ray starts
    if num_supernodes is None:
        num_supernodes = len(client_side(settings.config, settings.overrides).scenario.clients)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    backend_config = {"client_resources": {"num_cpus": num_cpus, "num_gpus": 0.0},
                      "init_args": {"include_dashboard": False, "num_cpus": os.cpu_count() or 1}}
    run_simulation(make_server_app(run_config), make_client_app(run_config), num_supernodes=num_supernodes,
                   backend_config=backend_config, verbose_logging=verbose)
