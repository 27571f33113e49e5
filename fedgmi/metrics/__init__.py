"""Metrics scored against the scenario's ground truth (evaluation only)."""

from fedgmi.metrics.mixture_scores import (
    MixtureScores,
    aggregate_proportions,
    assignment_accuracy,
    component_accuracy_extremes,
    confusion_matrix,
    is_one_to_one,
    learned_groups,
    learned_of_true,
    learned_order,
    match_components,
    matched_column_names,
    nats_to_bits_per_dim,
    normalized_mutual_info,
    proportion_errors,
    score_mixture,
)

__all__ = [
    "MixtureScores",
    "aggregate_proportions",
    "assignment_accuracy",
    "component_accuracy_extremes",
    "confusion_matrix",
    "is_one_to_one",
    "learned_groups",
    "learned_of_true",
    "learned_order",
    "match_components",
    "matched_column_names",
    "nats_to_bits_per_dim",
    "normalized_mutual_info",
    "proportion_errors",
    "score_mixture",
]
