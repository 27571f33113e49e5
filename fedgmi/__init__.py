"""fedgmi: federated learning under probabilistic mixtures (FedGMI, arXiv 2605.08760)."""

__version__ = "0.1.0"
