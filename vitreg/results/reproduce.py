"""What `vitreg reproduce` writes: ``results.json`` (a :class:`ReproduceResults`), from which report.md and
report.html are drawn. Every number in it is read from a stage's own result file or computed from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from vitreg.results.codec import SCHEMA_VERSION
from vitreg.results.lost import Corloc
from vitreg.results.train import TrainingSummary


@dataclass(kw_only=True)
class Stat:
    """Mean ± sample std over the seeds that have a value (``n`` of ``of``)."""

    mean: float
    std: float
    n: int
    of: int
    values: list[float]


@dataclass(kw_only=True)
class CorlocSummary:
    corloc: float | None  # at bias 0
    images: int
    protocol: str | None = None
    best: Corloc | None = None  # the bias with the highest CorLoc


@dataclass(kw_only=True)
class ModelRow:
    """One trained model's numbers (one seed, one register count), read from its stages."""

    train: TrainingSummary | None = None  # None for a pretrained model (nothing was trained)
    # diagnose (output patch tokens)
    outlier_ratio: float
    norm_ratio: float | None = None
    bimodal: bool | None = None
    ashman_d: float | None = None
    threshold: float | None = None
    mean_norm_outlier: float | None = None
    mean_norm_normal: float | None = None
    first_outlier_layer: int | None = None
    depth: int | None = None
    first_layer_fraction: float | None = None
    sim_outlier: float | None = None
    sim_normal: float | None = None
    share_redundant: float | None = None
    background_outliers: float | None = None
    background_patches: float | None = None
    cls_norm: float | None = None
    verdict: str | None = None
    # probes
    position_normal: float | None = None
    position_outlier: float | None = None
    position_chance: float | None = None
    # the ridge regression of (row, column): mean error in patches, bootstrap s.e. by photo; outlier - normal gap
    position_error_normal: float | None = None
    position_error_normal_se: float | None = None
    position_error_outlier: float | None = None
    position_error_outlier_se: float | None = None
    position_error_all: float | None = None
    position_error_gap: float | None = None
    position_error_gap_se: float | None = None
    global_cls: float | None = None
    global_normal: float | None = None
    global_outlier: float | None = None
    global_chance: float | None = None
    linear_cls: float | None = None
    linear_cls_mean: float | None = None
    seg_miou: float | None = None
    seg_background_only: bool | None = None  # every object class has IoU 0: the probe says "background" only
    depth_rmse: float | None = None
    depth_rmse_baseline: float | None = None
    pixel_linear_normal: float | None = None
    pixel_linear_outlier: float | None = None
    pixel_mlp_normal: float | None = None
    pixel_mlp_outlier: float | None = None
    # outlier - normal pixel MSE and its bootstrap s.e. by photo
    pixel_linear_gap: float | None = None
    pixel_linear_gap_se: float | None = None
    pixel_mlp_gap: float | None = None
    pixel_mlp_gap_se: float | None = None
    # LOST
    corloc_synthetic: CorlocSummary | None = None
    corloc_coco: CorlocSummary | None = None
    corloc: dict[str, CorlocSummary] = field(default_factory=dict)  # pretrained pairs: VOC07, VOC12, COCO20k


@dataclass(kw_only=True)
class Row:
    """A table row: the paper's value without / with registers, and ours per register count."""

    quantity: str
    paper: float | bool | None = None
    paper_reg: float | bool | None = None
    ours: dict[str, Stat | None] = field(default_factory=dict)  # registers -> aggregate over seeds


@dataclass(kw_only=True)
class Claim:
    claim: str
    status: str  # reproduced / not reproduced / not tested
    evidence: str
    item: str = ""  # the id of the item it belongs to
    model: str = ""  # the model it was tested on
    paper: str = ""  # the paper that makes the claim (empty: Darcet et al.)


@dataclass(kw_only=True)
class OverheadRow:
    model: str
    registers: int
    flops_overhead: float
    added_params: int
    tokens: int


@dataclass(kw_only=True)
class Item:
    """One figure or table of the paper."""

    id: str
    title: str
    source: str
    rows: list[Row] = field(default_factory=list)
    overhead: list[OverheadRow] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    note: str = ""
    part: str = ""  # "I" (a released model) or "II" (the trained lab models); "" in runs before the parts
    columns: dict[str, str] = field(default_factory=dict)  # the ours-columns' labels by key (default: "ours: N reg")


@dataclass(kw_only=True)
class StageRecord:
    stage: str
    kind: str
    cached: bool
    seconds: float | None = None


@dataclass(kw_only=True)
class ModelSource:
    """Where one model of the run came from: trained in this run, or the package's zoo (with its provenance)."""

    registers: int
    seed: int
    source: str  # "trained" | "zoo"
    directory: str
    zoo: str | None = None  # entry name
    command: str | None = None  # the command that trained the zoo entry
    commit: str | None = None
    cpu: str | None = None
    update_minutes: float | None = None


@dataclass(kw_only=True)
class Timing:
    this_run_seconds: float
    last_computing_run: dict[str, Any] | None = None  # wall_seconds, stages_run, stages


@dataclass(kw_only=True)
class ReproduceResults:
    """``results.json`` of a reproduce output folder."""

    RESULT_FILE: ClassVar[str] = "results.json"  # its file in a run directory
    schema_version: int = SCHEMA_VERSION
    command: str = "reproduce"
    title: str
    plan: dict[str, Any]
    config: str  # the training config's YAML text
    registers: list[int]
    compared: list[int]  # (without, with) registers
    seeds: list[int]
    items: list[Item]
    claims: list[Claim]
    per_model: dict[str, dict[str, ModelRow]]  # registers -> seed -> row
    stages: list[StageRecord]
    models: list[ModelSource] = field(default_factory=list)
    timing: Timing | None = None
    notes: list[str] = field(default_factory=list)  # e.g. where coco-mini was looked for
    released: dict[str, Any] = field(default_factory=dict)  # Part I's plan (model, images; "skipped": why not run)

    def item(self, item_id: str) -> Item:
        return next(i for i in self.items if i.id == item_id)
