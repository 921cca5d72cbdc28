"""What `vitreg inspect --out DIR` writes: ``inspect.json`` (an :class:`InspectResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from vitreg.results.codec import SCHEMA_VERSION
from vitreg.results.diagnose import BadImage


@dataclass(kw_only=True)
class InspectLayer:
    """Patch-token norms of one block output (before the final norm)."""

    layer: int
    median: float | None
    p98: float | None
    max: float
    share_above_3x_median: float


@dataclass(kw_only=True)
class InspectResult:
    RESULT_FILE: ClassVar[str] = "inspect.json"  # its file in a run directory

    schema_version: int = SCHEMA_VERSION
    command: Literal["inspect"] = "inspect"
    model: str
    images: str  # the image source
    num_images: int
    bad_images: list[BadImage] = field(default_factory=list)
    layers: list[InspectLayer]
    cls_norm: float | None = None  # last layer
    register_norms: list[float] = field(default_factory=list)  # last layer, one per register
    config: dict[str, Any] = field(default_factory=dict)
