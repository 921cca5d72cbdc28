"""What `vitreg flops` writes: ``flops.json`` (a :class:`FlopsResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from vitreg.results.codec import SCHEMA_VERSION


@dataclass(kw_only=True)
class FlopsRow:
    """One forward at batch 1 of a model with ``registers`` registers at ``img_size``; overheads vs 0 registers."""

    registers: int
    img_size: int
    tokens: int
    flops: int
    params: int
    width: int
    flops_overhead: float
    params_overhead: float
    added_params: int


@dataclass(kw_only=True)
class FlopsModel:
    model: str
    width: int
    depth: int
    patch_size: int
    rows: list[FlopsRow]


@dataclass(kw_only=True)
class FlopsResult:
    """``flops.json`` of a FLOPs run directory."""

    RESULT_FILE: ClassVar[str] = "flops.json"  # its file in a run directory
    schema_version: int = SCHEMA_VERSION
    command: Literal["flops"] = "flops"
    counted: str  # what the counter counts, in words
    models: list[FlopsModel]
    config: dict[str, Any] = field(default_factory=dict)
