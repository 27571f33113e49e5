"""The strategy contract, checked: :func:`check_strategy` (as scikit-learn's ``check_estimator``)
runs a class or an instance through the real round loop on a small scenario and checks what
the loop relies on; :func:`check_strategy_class` is its static part, which ``fedgmi validate``
(and every run) applies to the configured algorithm before any work.

What is checked:

1. the class: a :class:`~fedgmi.federated.strategy.Strategy` subclass with every required hook
   (``client_update``, ``aggregate``, ``component_outputs``) implemented, and the evaluation
   flags of the right type;
2. ``setup`` builds a non-empty :attr:`~fedgmi.federated.strategy.Strategy.global_state` of
   finite tensors;
3. ``rounds`` rounds through :func:`~fedgmi.federated.server.run_federation` with an
   evaluation each round: the messages check themselves (:mod:`fedgmi.federated.messages`);
   ``aggregate`` returns metrics (name -> number) and replaces the global state instead of
   changing its tensors in place; the state stays finite;
4. the same seed gives the same global state (a second, fresh copy of the strategy);
5. ``state_dict`` / ``load_state_dict`` restore the global and client state into a fresh copy.
"""

from __future__ import annotations

import copy
import inspect
import io
import math
from collections.abc import Sequence
from typing import Any

import lightning
import torch

from fedgmi.errors import ConfigError
from fedgmi.federated.messages import ClientReply, ContractError
from fedgmi.federated.strategy import ProblemSpec, Strategy

FLAGS: dict[str, type | tuple[type, ...]] = {"models_mixture": bool, "pixel_density": bool, "uses_ground_truth": bool, "evidence_uses_labels": bool,
         "density_weight": (int, float)}
"""The evaluation flags of :class:`~fedgmi.federated.strategy.EvaluationHooks` and their types."""


def contract_problems(cls: type) -> list[str]:
    """What keeps ``cls`` from being a complete strategy (empty when nothing): not a Strategy
    subclass, required hooks left abstract, evaluation flags of the wrong type."""
    if not (inspect.isclass(cls) and issubclass(cls, Strategy)):
        return [f"{getattr(cls, '__name__', cls)!r} is not a fedgmi.federated.Strategy subclass"]
    problems = []
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        problems.append(f"missing the required hook(s) {', '.join(missing)}")
    for flag, kind in FLAGS.items():
        value = getattr(cls, flag, None)
        if not isinstance(value, property) and not isinstance(value, kind):
            problems.append(f"{flag} = {value!r} is not a {getattr(kind, '__name__', 'number')}")
    return problems


def check_strategy_class(cls: type, key: str = "algorithm") -> None:
    """The static contract check: raise ConfigError (one line naming ``key`` and the class)
    when ``cls`` is not a complete strategy (:func:`contract_problems`)."""
    problems = contract_problems(cls)
    if problems:
        name = f"{cls.__module__}.{cls.__qualname__}" if inspect.isclass(cls) else repr(cls)
        raise ConfigError(f"{key} = {name}: {'; '.join(problems)} (the strategy contract: see the "
                          "guide 'Extend fedgmi')")


def _fail(strategy: Strategy, message: str) -> ContractError:
    return ContractError(f"{strategy.name}: {message}")


def _check_state(strategy: Strategy, when: str) -> tuple[torch.Tensor, ...]:
    state = strategy.global_state
    if not isinstance(state, tuple) or not state or not all(isinstance(t, torch.Tensor) for t in state):
        raise _fail(strategy, f"{when}: global_state must be a non-empty tuple of tensors, got {state!r:.80}")
    if not all(torch.isfinite(t).all() for t in state if t.is_floating_point()):
        raise _fail(strategy, f"{when}: global_state holds NaN or Inf")
    return state


def _checked_aggregate(strategy: Strategy) -> None:
    """Wrap the instance's ``aggregate``: metrics a mapping of numbers, the old global state's
    tensors left as they were (replaced, not changed in place)."""
    aggregate = strategy.aggregate

    def checked(round_idx: int, replies: Sequence[ClientReply]) -> dict[str, float]:
        old = strategy.global_state
        before = [t.clone() for t in old]
        metrics = aggregate(round_idx, replies)
        if not isinstance(metrics, dict) or not all(isinstance(k, str) and isinstance(v, (int, float))
                                                    for k, v in metrics.items()):
            raise _fail(strategy, f"aggregate must return metrics (a dict of name -> number), got {metrics!r:.80}")
        if any(not torch.equal(a, b) for a, b in zip(old, before)):
            raise _fail(strategy, "aggregate changed the old global state's tensors in place; assign the new "
                                  "state instead (self.global_state = new)")
        _check_state(strategy, f"after aggregate of round {round_idx}")
        return metrics

    strategy.aggregate = checked  # type: ignore[method-assign]


def small_scenario(seed: int = 1) -> Any:
    """The default scenario of :func:`check_strategy`: scikit-learn's digits (offline), K = 3
    rotations, 4 clients of 40-60 examples."""
    from fedgmi.data import ScenarioConfig, build_scenario

    return build_scenario(ScenarioConfig(dataset="digits", num_clients=4, samples_per_client=(40, 60), seed=seed))


def _run(strategy: Strategy, scenario: Any, rounds: int, seed: int) -> dict[str, float]:
    """``strategy`` set up on a CPU Fabric and run ``rounds`` rounds, evaluated each round."""
    from fedgmi.federated.evaluation import EvalConfig
    from fedgmi.federated.server import FederationConfig, LoopState, run_federation

    train_examples = sum(len(c.x_train) for c in scenario.clients)
    strategy.setup(ProblemSpec.of(scenario, strategy, train_examples), lightning.Fabric(accelerator="cpu", devices=1),
                   seed)
    _check_state(strategy, "after setup")
    _checked_aggregate(strategy)
    rows: list[dict[str, float]] = []
    row, _ = run_federation(strategy, scenario, FederationConfig(rounds=rounds, client_fraction=1.0, eval_every=1),
                            EvalConfig(num_samples=2, proportion_iters=5), seed,
                            on_eval=lambda r, m, e: rows.append(m), state=LoopState(), progress=False)
    del strategy.aggregate  # the class's own again
    if len(rows) != rounds or not 0.0 <= row["client_accuracy_mean"] <= 1.0:
        raise _fail(strategy, f"evaluation gave {len(rows)} rows for {rounds} rounds, client accuracy "
                              f"{row.get('client_accuracy_mean')}")
    return row


def _same(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x.cpu(), y.cpu()) for x, y in zip(a, b))


def _check_resume(strategy: Strategy, fresh: Strategy, scenario: Any, seed: int) -> None:
    """``state_dict`` survives torch.save and restores the global and client state into ``fresh``."""
    buffer = io.BytesIO()
    torch.save(strategy.state_dict(), buffer)
    buffer.seek(0)
    train_examples = sum(len(c.x_train) for c in scenario.clients)
    fresh.setup(ProblemSpec.of(scenario, fresh, train_examples), lightning.Fabric(accelerator="cpu", devices=1), seed)
    fresh.load_state_dict(torch.load(buffer, weights_only=False))
    if not _same(fresh.global_state, strategy.global_state):
        raise _fail(strategy, "load_state_dict(state_dict()) did not restore the global state")
    clients = strategy.client_state
    if sorted(fresh.client_state) != sorted(clients) or not all(
            sorted(fresh.client_state[c]) == sorted(s) and _same([fresh.client_state[c][k] for k in sorted(s)],
                                                                 [s[k] for k in sorted(s)])
            for c, s in clients.items()):
        raise _fail(strategy, "load_state_dict(state_dict()) did not restore the client state")


def check_strategy(strategy: Strategy | type[Strategy], scenario: Any = None, rounds: int = 2,
                   seed: int = 0) -> dict[str, float]:
    """Run the contract checks (the module docstring) on a strategy class (built with no
    arguments) or a configured, not yet set up instance.

    Args:
        strategy: The class or instance to check (an instance is copied, never set up itself).
        scenario: The scenario to run on (default :func:`small_scenario`, digits).
        rounds: Rounds of the run (>= 1; 2 covers a round after the first aggregation).
        seed: The run's seed.

    Returns:
        The last evaluation's metrics row.

    Raises:
        ConfigError: The class is not a complete strategy (one line, as ``fedgmi validate``).
        ContractError: A check failed (the message names the strategy and the check).
    """
    cls = strategy if inspect.isclass(strategy) else type(strategy)
    check_strategy_class(cls)
    pristine = cls() if inspect.isclass(strategy) else copy.deepcopy(strategy)
    scenario = small_scenario() if scenario is None else scenario
    first, second = copy.deepcopy(pristine), copy.deepcopy(pristine)
    row = _run(first, scenario, rounds, seed)
    _run(second, scenario, rounds, seed)
    if not _same(first.global_state, second.global_state):
        raise _fail(first, "two runs with the same seed gave different global states")
    _check_resume(first, copy.deepcopy(pristine), scenario, seed)
    if not all(math.isfinite(v) for k, v in row.items() if k.startswith("client_accuracy")):
        raise _fail(first, "the client accuracies are not finite")
    return row


__all__ = ["check_strategy", "check_strategy_class", "contract_problems", "small_scenario"]
