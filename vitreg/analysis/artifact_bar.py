"""The bar for "this model has high-norm artifacts" and for "registers removed them", used by reproduce and the
artifact lab alike (docs/artifact-lab.md): measured on the output patch-token norms under the auto rule."""

from __future__ import annotations

MIN_OUTLIER_RATIO = 0.01  # at least 1% of patch tokens are outliers
MIN_NORM_RATIO = 3.0  # at least 3x the norm of the normal tokens
MAX_OUTLIER_RATIO_WITH_REGISTERS = 0.001  # "gone": at most 0.1% outliers and not bimodal


def meets_norm_bar(bimodal: bool | None, outlier_ratio: float | None, norm_ratio: float | None) -> bool:
    """The norm part of the artifact bar: bimodal under the auto rule, enough outliers, far enough apart."""
    return bool(bimodal and (outlier_ratio or 0) >= MIN_OUTLIER_RATIO and (norm_ratio or 0) >= MIN_NORM_RATIO)


def artifacts_gone(bimodal: bool | None, outlier_ratio: float | None) -> bool:
    return (not bimodal) and (outlier_ratio or 0) <= MAX_OUTLIER_RATIO_WITH_REGISTERS
