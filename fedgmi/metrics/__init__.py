"""Metrics scored against the scenario's ground truth (evaluation only).

:mod:`~fedgmi.metrics.mixture_scores` holds the reference numpy functions;
:mod:`~fedgmi.metrics.mixture_metrics` the same scores as torchmetrics ``Metric``s, accumulated
over batches or clients, which the evaluation uses.
"""

from fedgmi.metrics.mixture_metrics import (
    AssignmentAccuracy,
    ComponentConfusion,
    ComponentMatching,
    MixtureScores,
    NormalizedMutualInfo,
    ProportionError,
    score_mixture,
)
from fedgmi.metrics.mixture_scores import (
    aggregate_proportions,
    assignment_accuracy,
    component_accuracy_extremes,
    confusion_matrix,
    is_one_to_one,
    learned_groups,
    learned_of_true,
    learned_order,
    map_components,
    match_components,
    matched_column_names,
    nats_to_bits_per_dim,
    normalized_mutual_info,
    proportion_errors,
    proportion_overlap,
)

__all__ = [
    "AssignmentAccuracy",
    "ComponentConfusion",
    "ComponentMatching",
    "MixtureScores",
    "NormalizedMutualInfo",
    "ProportionError",
    "aggregate_proportions",
    "assignment_accuracy",
    "component_accuracy_extremes",
    "confusion_matrix",
    "is_one_to_one",
    "learned_groups",
    "learned_of_true",
    "learned_order",
    "map_components",
    "match_components",
    "matched_column_names",
    "nats_to_bits_per_dim",
    "normalized_mutual_info",
    "proportion_errors",
    "proportion_overlap",
    "score_mixture",
]
