"""Analyses: tensors in, plain dicts and arrays out. Outlier rules (norms), streaming statistics (stream), the
diagnose pass (diagnose) and its summary (summary), neighbour similarity, maps and register specialisation."""

from vitreg.analysis.norms import (
    Threshold,
    find_threshold,
    find_threshold_from_histogram,
    outlier_stats,
    outlier_stats_from_histogram,
)

__all__ = [
    "Threshold",
    "find_threshold",
    "find_threshold_from_histogram",
    "outlier_stats",
    "outlier_stats_from_histogram",
]
