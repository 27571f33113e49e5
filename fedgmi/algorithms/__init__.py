"""The algorithms, each a :class:`~fedgmi.federated.strategy.Strategy`: FedGMI and its peers.

Importing this package makes every algorithm selectable by its class name on the command line
(``--algorithm FedEM``).
"""

from fedgmi.algorithms.classifier_mixture import ClassifierMixture
from fedgmi.algorithms.fedavg import FedAvg
from fedgmi.algorithms.fedem import FedEM
from fedgmi.algorithms.fedgengmm import FedGenGMM
from fedgmi.algorithms.fedgmm import FedGMM
from fedgmi.algorithms.fedsoft import FedSoft
from fedgmi.algorithms.fedvtc import FedVTC
from fedgmi.algorithms.gmi import FedGMI
from fedgmi.algorithms.ifca import IFCA
from fedgmi.algorithms.local import Local
from fedgmi.algorithms.oracle import Oracle
from fedgmi.algorithms.pfedgm import PFedGM

__all__ = ["IFCA", "ClassifierMixture", "FedAvg", "FedEM", "FedGMI", "FedGMM", "FedGenGMM", "FedSoft", "FedVTC",
           "Local", "Oracle", "PFedGM"]
