"""The federated round loop and its contract.

The contract, exported here: a :class:`Strategy` (with :class:`EvaluationHooks`, or
:class:`ParameterVectorStrategy` for K flat vectors) describes what clients receive, what a
client does with its data and how replies become the new global state; :class:`ClientTask`
and :class:`ClientReply` are what crosses the client/server boundary; :class:`ClientWorker`
is the one client worker (local training with per-sample weights); :class:`ProblemSpec` is
what a strategy knows before training; :func:`check_strategy` runs the contract test on a
class; :func:`aggregate_components` is the per-component weighted average of deltas. The rest of the subpackage is the loop's machinery: the E-step (``responsibilities``),
aggregation, the channel and its codecs, the loop (``server``), evaluation, checkpoints and
multi-process runs.
"""

from fedgmi.federated.aggregation import aggregate_components
from fedgmi.federated.contract import check_strategy
from fedgmi.federated.messages import ClientReply, ClientTask, ContractError, derive_seed
from fedgmi.federated.strategy import (
    ClientState,
    EvaluationHooks,
    Initialization,
    ParameterVectorStrategy,
    ProblemSpec,
    Strategy,
)
from fedgmi.federated.worker import ClientWorker, LocalTraining, LocalUpdate

__all__ = [
    "ClientReply",
    "ClientState",
    "ClientTask",
    "ClientWorker",
    "ContractError",
    "EvaluationHooks",
    "Initialization",
    "LocalTraining",
    "LocalUpdate",
    "ParameterVectorStrategy",
    "ProblemSpec",
    "Strategy",
    "aggregate_components",
    "check_strategy",
    "derive_seed",
]
