"""What `vitreg lost` writes: ``lost.json`` (a :class:`LostResult`) and ``figures/lost_examples.npz``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from vitreg.results.codec import SCHEMA_VERSION
from vitreg.results.diagnose import BadImage


@dataclass(kw_only=True)
class LostSettings:
    layer: int
    features: str  # k / q / v / tokens
    k: int
    normalize: bool
    patch_size: list[int]


@dataclass(kw_only=True)
class Corloc:
    """CorLoc for one bias added to the Gram matrix: images whose box has IoU >= ``iou_threshold`` with a GT box."""

    bias: float
    corloc: float | None  # None when no image has a ground-truth box
    correct: int
    images: int
    no_gt: int = 0  # images without any ground-truth box (left out of the fraction)
    mean_best_iou: float | None = None
    iou_threshold: float = 0.5
    seed_outside_mask: int = 0


@dataclass(kw_only=True)
class LostResult:
    """``lost.json`` of a LOST run directory."""

    RESULT_FILE: ClassVar[str] = "lost.json"  # its file in a run directory
    schema_version: int = SCHEMA_VERSION
    command: Literal["lost"] = "lost"
    model: str
    registers: int
    dataset: str
    protocol: str
    preprocessing: str | None = None  # how the images were prepared (geometry, size, interpolation, mean/std)
    config: dict[str, Any] = field(default_factory=dict)
    settings: LostSettings
    results: list[Corloc]
    images: int
    bad_images: list[BadImage] = field(default_factory=list)
    per_image: list[dict[str, Any]] = field(default_factory=list)  # path, size, gt_boxes, "bias=B": {box, best_iou}
    notes: list[str] = field(default_factory=list)  # what could not be measured on this model, and why

    def at_bias(self, bias: float = 0.0) -> Corloc:
        """The row of ``bias`` (the first row when that bias was not run)."""
        return next((r for r in self.results if r.bias == bias), self.results[0])
