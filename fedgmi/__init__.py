"""fedgmi: federated learning under probabilistic mixtures (FedGMI, arXiv 2605.08760).

The public API, small and stable (everything else is private by convention):

* :func:`fit` and :func:`test` run a federation from a config as ``fedgmi fit`` / ``fedgmi
  test`` do, writing the same run folder (:mod:`fedgmi.run`);
* the scenario builders :class:`ScenarioConfig` and :func:`build_scenario`
  (:mod:`fedgmi.data`; :mod:`fedgmi.data.custom` for your own data);
* the strategies: FedGMI and its peers (:mod:`fedgmi.algorithms`), the base classes
  :class:`Strategy` and :class:`ClassifierMixture`, and :func:`check_strategy`, the contract
  test for your own (:mod:`fedgmi.federated` holds the rest of the contract).

```python
import fedgmi

run = fedgmi.fit("configs/pm_digits.yaml", overrides={"federation.rounds": 2})
print(run.path, run.metrics["assignment_accuracy"])
```

The names load on first use (``import fedgmi`` itself imports neither torch nor Lightning).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "fit": "fedgmi.run", "test": "fedgmi.run", "RunResult": "fedgmi.run", "Stopped": "fedgmi.run",
    "ConfigError": "fedgmi.errors",
    "ScenarioConfig": "fedgmi.data", "build_scenario": "fedgmi.data", "Scenario": "fedgmi.data",
    "Strategy": "fedgmi.federated.strategy", "check_strategy": "fedgmi.federated.contract",
    "ClassifierMixture": "fedgmi.algorithms", "FedAvg": "fedgmi.algorithms", "FedEM": "fedgmi.algorithms",
    "FedGMI": "fedgmi.algorithms", "FedGMM": "fedgmi.algorithms", "FedGenGMM": "fedgmi.algorithms",
    "FedSoft": "fedgmi.algorithms", "FedVTC": "fedgmi.algorithms", "IFCA": "fedgmi.algorithms",
    "Local": "fedgmi.algorithms", "Oracle": "fedgmi.algorithms", "PFedGM": "fedgmi.algorithms",
}
"""Public name -> the module that defines it (imported on first use)."""

__all__ = [
    "IFCA", "ClassifierMixture", "ConfigError", "FedAvg", "FedEM", "FedGMI", "FedGMM", "FedGenGMM", "FedSoft",
    "FedVTC", "Local", "Oracle", "PFedGM", "RunResult", "Scenario", "ScenarioConfig", "Stopped", "Strategy",
    "__version__", "build_scenario", "check_strategy", "fit", "test",
]

if TYPE_CHECKING:  # what the lazy names are, for type checkers and the API reference
    from fedgmi.algorithms import (
        IFCA,
        ClassifierMixture,
        FedAvg,
        FedEM,
        FedGenGMM,
        FedGMI,
        FedGMM,
        FedSoft,
        FedVTC,
        Local,
        Oracle,
        PFedGM,
    )
    from fedgmi.data import Scenario, ScenarioConfig, build_scenario
    from fedgmi.errors import ConfigError
    from fedgmi.federated.contract import check_strategy
    from fedgmi.federated.strategy import Strategy
    from fedgmi.run import RunResult, Stopped, fit, test


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fedgmi' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
