"""What `vitreg probe` writes: ``probe.json`` (a :class:`ProbeResult`).

Accuracies and mIoU are shares in [0, 1]; a group without tokens (e.g. no outliers) has ``None`` and a note.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from vitreg.results.codec import SCHEMA_VERSION
from vitreg.results.diagnose import BadImage, OutlierStats


@dataclass(kw_only=True)
class Threshold:
    """The outlier rule on last-block patch-token norms and the threshold it gave (None = no outliers)."""

    threshold: float | None = None
    rule: str = "auto"
    value: float | None = None
    bimodal: bool | None = None
    statistic: dict[str, Any] = field(default_factory=dict)
    kind: str = "auto"  # = rule (the name diagnose uses)


@dataclass(kw_only=True)
class PositionScore:
    count: int
    accuracy: float | None = None
    note: str | None = None


@dataclass(kw_only=True)
class PixelScore:
    count: int
    mse: float | None = None
    note: str | None = None


@dataclass(kw_only=True)
class PositionError:
    """Mean distance (in patches) of a ridge regression's predicted (row, column) from the true one, with its
    standard error from a bootstrap over the test photos."""

    count: int
    error: float | None = None
    se: float | None = None
    note: str | None = None


@dataclass(kw_only=True)
class PositionGap:
    """Outlier minus normal of a per-token error (the position regression's, a pixel probe's), with its paired
    bootstrap standard error over the test photos (> 2 s.e.: the outliers measurably do worse)."""

    gap: float
    se: float
    photos_with_outliers: int


@dataclass(kw_only=True)
class PositionRegression:
    alpha: float  # the ridge strength, chosen on held-out fit photos
    units: str
    groups: dict[str, PositionError]  # all / normal / outlier
    gap: PositionGap | None = None


@dataclass(kw_only=True)
class LocalProbes:
    """Position classification and pixel reconstruction per token group (paper Fig. 5b)."""

    tokens: str
    train_images: int
    test_images: int
    grid: list[int]
    chance_accuracy: float
    pixel_units: str
    protocol: str
    position: dict[str, PositionScore]  # group (all / normal / outlier) -> score
    pixel: dict[str, dict[str, PixelScore]]  # head (linear / mlp) -> group -> score
    position_regression: PositionRegression | None = None  # runs written before it existed: None
    pixel_gap: dict[str, PositionGap] = field(default_factory=dict)  # head -> outlier - normal MSE ({}: no outliers)


@dataclass(kw_only=True)
class GlobalScore:
    images: int
    mean: float | None = None
    std: float | None = None
    per_seed: list[float] = field(default_factory=list)
    note: str | None = None


@dataclass(kw_only=True)
class GlobalProbe:
    """Image classification from one token per image (paper Table 1)."""

    tokens: str
    seeds: list[int]
    num_classes: int
    chance_accuracy: float
    images: int
    images_without_outlier: int
    results: dict[str, GlobalScore]  # cls / normal / outlier


@dataclass(kw_only=True)
class LinearProbe:
    train_images: int
    test_images: int
    num_classes: int
    chance_accuracy: float
    top1: dict[str, float]  # features (cls, cls+mean_patch or mean_patch) -> top-1


@dataclass(kw_only=True)
class SegmentationProbe:
    train_images: int
    test_images: int
    num_classes: int
    classes_present: int
    miou: float
    iou_per_class: dict[str, float]  # class id (0 = background) -> IoU
    pixel_accuracy: float
    patch_accuracy: float


@dataclass(kw_only=True)
class DepthProbe:
    train_images: int
    test_images: int
    rmse: float
    rmse_mean_baseline: float  # predicting the training mean everywhere


@dataclass(kw_only=True)
class DenseProbes:
    segmentation: SegmentationProbe | None = None
    depth: DepthProbe | None = None


@dataclass(kw_only=True)
class ProbeResult:
    """``probe.json`` of a probe run directory."""

    RESULT_FILE: ClassVar[str] = "probe.json"  # its file in a run directory
    schema_version: int = SCHEMA_VERSION
    command: Literal["probe"] = "probe"
    model: str
    registers: int
    images: str  # the image source
    num_images: int
    preprocessing: str | None = None  # how the images were prepared (geometry, size, interpolation, mean/std)
    bad_images: list[BadImage] = field(default_factory=list)
    layer: int  # block whose output tokens were probed
    threshold: Threshold
    outliers: OutlierStats
    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    local: LocalProbes | None = None
    global_probe: GlobalProbe | None = field(default=None, metadata={"json": "global"})
    linear: LinearProbe | None = None
    dense: DenseProbes | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # probe -> why it did not run
    notes: list[str] = field(default_factory=list)  # what could not be measured on this model, and why
