"""Metrics scored against the scenario's ground truth (evaluation only)."""

from fedgmi.metrics.mixture_scores import (
    MixtureScores,
    assignment_accuracy,
    confusion_matrix,
    learned_of_true,
    match_components,
    nats_to_bits_per_dim,
    normalized_mutual_info,
    proportion_errors,
    score_mixture,
)

__all__ = [
    "MixtureScores",
    "assignment_accuracy",
    "confusion_matrix",
    "learned_of_true",
    "match_components",
    "nats_to_bits_per_dim",
    "normalized_mutual_info",
    "proportion_errors",
    "score_mixture",
]
