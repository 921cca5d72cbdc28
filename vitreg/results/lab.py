"""What `vitreg lab` writes: ``lab.json`` (a :class:`LabResult`) and the same table as ``lab.md``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from vitreg.results.codec import SCHEMA_VERSION


@dataclass(kw_only=True)
class LabRow:
    """One trained model of the grid (point, seed, registers) and its diagnosis on the held-out scenes."""

    point: str
    overrides: str
    seed: int
    registers: int
    top1: float | None
    minutes: float
    artifacts: bool  # the norm bar: bimodal, enough outliers, far enough apart
    outlier_ratio: float
    norm_ratio: float | None = None
    bimodal: bool | None = None
    ashman_d: float | None = None
    first_outlier_layer: int | None = None
    sim_outlier: float | None = None
    sim_normal: float | None = None
    background_outliers: float | None = None
    background_patches: float | None = None
    # attention sinks (diagnose --sinks): the block with the largest share of heads with a sink, that share, its
    # heads' mean top mass, the share of those sinks on a background patch, and the last block's [CLS] share
    sink_layer: int | None = None
    sink_heads: float | None = None
    sink_top_mass: float | None = None
    sinks_on_background: float | None = None
    cls_share_last: float | None = None
    # mean off-diagonal cosine similarity of the registers' output tokens (1.000: identical registers)
    register_similarity: float | None = None


@dataclass(kw_only=True)
class LabResult:
    RESULT_FILE: ClassVar[str] = "lab.json"  # its file in a run directory

    schema_version: int = SCHEMA_VERSION
    command: str = "lab"
    grid: dict[str, Any]
    rows: list[LabRow]
