"""What `vitreg fix --method distill` writes: ``distill.json`` (a :class:`DistillResult`): how registers were
distilled into a model, what it cost, and the held-out figures of the original, the distilled model and the
test-time-register model side by side. The model itself is ``delta.json`` + ``delta.safetensors``
(:mod:`vitreg.models.load.delta`) in the same folder. Plain data, no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from vitreg.results.codec import SCHEMA_VERSION


@dataclass(kw_only=True)
class DistillLayer:
    """One block on the held-out images: patch tokens above the original's auto threshold there, in the original,
    the distilled model and the test-time-register model; and whether the distilled model's own norms there are
    bimodal (the auto rule's test)."""

    layer: int
    threshold: float | None  # the original's auto threshold (None: no outlier mode there)
    share_before: float
    share_after: float
    share_ttr: float | None = None
    bimodal_after: bool | None = None
    threshold_after: float | None = None  # the distilled model's own auto threshold there


@dataclass(kw_only=True)
class ModelFigures:
    """Held-out figures of one model (the original, the distilled model or the test-time-register model)."""

    outlier_share: float  # at the last block, above the original's threshold
    worst_share: float  # the largest share over the blocks
    bimodal: bool | None  # its own last-block norms
    cls_cosine: float | None  # median over images of the final [CLS] cosine to the original's (None: no [CLS])
    register_norm: float | None = None  # mean last-block norm of its added registers (None: none added)
    patch_norm: float | None = None  # median last-block patch norm


@dataclass(kw_only=True)
class Comparison:
    """The original, a model with distilled registers and the original with one test-time register, measured side
    by side on the same images (``vitreg.jobs.distill.compare_distilled``): a diagnose run directory (a, b, c) and
    this, ``comparison.json``."""

    RESULT_FILE: ClassVar[str] = "comparison.json"  # its file in a run directory

    schema_version: int = SCHEMA_VERSION
    command: Literal["compare"] = "compare"
    original_spec: str
    distilled_spec: str
    registers: int  # added by the distillation
    images: int
    source: str
    directory: str  # the diagnose run directory, relative to this file's folder ("." when it is the same)
    layers: list[DistillLayer] = field(default_factory=list)
    original: ModelFigures
    distilled: ModelFigures
    ttr: ModelFigures | None = None  # None: no neurons to build a test-time register from
    ttr_neurons: int = 0


@dataclass(kw_only=True)
class Cost:
    teacher_seconds: float  # computing the targets in this run (0 when every shard came from the cache)
    teacher_forwards: int  # teacher forwards computed (images x views)
    train_seconds: float  # inside updates, every part of a resumed run
    images_per_s: float
    device: str
    dtype: str
    world_size: int
    cpu: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class DistillResult:
    RESULT_FILE: ClassVar[str] = "distill.json"  # its file in a run directory

    schema_version: int = SCHEMA_VERSION
    command: Literal["distill"] = "distill"
    model: str  # the original's label
    base: str  # the original's spec
    registers: int
    teacher: str  # ttr | tta
    unlock: str
    unlock_description: str
    trained_parameters: int  # new register values + unlocked weights
    top_k: int  # register neurons behind the ttr teacher and the neurons / mlp-in sets
    target_blocks: list[int]
    images: int  # distilled on
    source: str
    steps: int
    batch_size: int
    held_out: Comparison | None = None  # measured on the held-out images (DIR/held_out)
    flops_overhead: float | None = None
    delta_bytes: int = 0
    cost: Cost | None = None
    outcome: str = ""
    notes: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    preprocessing: str = ""  # how the images were prepared (ImageTransform.describe; "" in files written before)
