"""What `vitreg diagnose` writes: ``metrics.json`` (a :class:`DiagnoseResult`) and one ``arrays_<key>.npz`` per
model (histograms, maps and example pictures; see docs/run-directory.md).

Norms are the analysed block's output patch tokens before the final norm (``ModelResult.layer``: the last block, the
paper's output norms, unless the run asked for another with ``--layer``) unless a field says otherwise; ratios are
shares in [0, 1]; ``None`` means "not measurable here" (e.g. no outliers to average).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from vitreg.results.codec import SCHEMA_VERSION


@dataclass(kw_only=True)
class BadImage:
    path: str
    reason: str


@dataclass(kw_only=True)
class Rule:
    """The outlier rule and the threshold it gave on the output norms (applied at the nearest histogram edge)."""

    kind: str  # auto / cutoff / percentile
    value: float | None = None  # the rule's parameter (cutoff norm, percentile); None for auto
    threshold: float | None = None  # None = no outliers
    bimodal: bool | None = None  # the auto rule's test, whichever rule decides
    statistic: dict[str, Any] = field(default_factory=dict)  # the bimodality test's numbers (name, value, ...)
    unsnapped_threshold: float | None = None  # before moving it to the nearest histogram edge


@dataclass(kw_only=True)
class OutlierStats:
    """Outliers (norm > threshold) vs normal patch tokens."""

    patch_tokens: int
    outliers: int
    outlier_ratio: float
    mean_norm_outlier: float | None = None
    mean_norm_normal: float | None = None
    median_norm_outlier: float | None = None
    median_norm_normal: float | None = None
    norm_ratio: float | None = None  # mean outlier norm / mean normal norm


@dataclass(kw_only=True)
class OutputStats(OutlierStats):
    cls_norm_mean: float | None = None
    register_norms_mean: list[float | None] = field(default_factory=list)


@dataclass(kw_only=True)
class LayerStats:
    """One block's output patch-token norms (Fig. 4a): the run's rule there, and the auto rule's test and outliers
    there (runs written before the auto fields existed read them as None)."""

    layer: int
    median: float | None = None
    p98: float | None = None
    max: float | None = None
    threshold: float | None = None  # the run's rule on this layer
    bimodal: bool | None = None  # the auto rule's bimodality test on this layer
    auto_threshold: float | None = None  # None: the auto rule finds no outlier mode here
    outlier_ratio: float | None = None  # above the run's rule's threshold on this layer
    norm_ratio: float | None = None  # mean outlier norm / mean normal norm, under the run's rule
    ashman_d: float | None = None  # the auto rule's separation of the two modes (bimodal needs > 2, and more)
    delta_bic: float | None = None  # > 0 favours two modes
    dip_ratio: float | None = None  # valley / lower peak of the smoothed histogram (bimodal needs <= 0.5)
    auto_outlier_ratio: float | None = None  # above the auto rule's threshold (0 when it finds no outlier mode)
    auto_norm_ratio: float | None = None
    outlier_norm_share: float | None = None  # share of the block's total patch norm held by the auto outliers


@dataclass(kw_only=True)
class Positions:
    """Where on the patch grid the outliers are (Fig. 10)."""

    outliers: int = 0
    tokens: int = 0
    max_share: float | None = None
    mean_share: float | None = None
    border_outlier_ratio: float | None = None
    interior_outlier_ratio: float | None = None
    top: list[tuple[int, int, float]] = field(default_factory=list)  # (row, column, share), highest first


@dataclass(kw_only=True)
class Neighbors:
    """4-neighbour cosine similarity of the input patch embeddings, outliers vs normal tokens (Fig. 5a)."""

    mean_sim_outlier: float | None = None
    mean_sim_normal: float | None = None
    median_sim_normal: float | None = None
    share_outliers_redundant: float | None = None
    redundant_definition: str = ""
    outlier_tokens: int = 0
    normal_tokens: int = 0


@dataclass(kw_only=True)
class Masks:
    """Background share of the outliers, where the images have masks."""

    available: bool = False
    images_with_mask: int = 0
    share_outliers_background: float | None = None
    share_patches_background: float | None = None
    outliers_on_background: int = 0
    outliers_on_objects: int = 0
    background_definition: str = ""


@dataclass(kw_only=True)
class RegisterAnalysis:
    """Last-layer attention maps of [CLS] and the registers over the dataset (specialisation, positional focus)."""

    count: int = 0
    similarity_mean_offdiag: float | None = None  # mean pairwise cosine similarity of register attention maps
    # the same for the registers' last-block output tokens (1.000: the registers never told themselves apart)
    output_similarity_mean_offdiag: float | None = None
    query_names: list[str] = field(default_factory=list)  # ["cls", "reg0", ...]
    attention_peak: dict[str, list[int]] = field(default_factory=dict)  # query -> (row, column) of its mean map's max


@dataclass(kw_only=True)
class SinkLayer:
    """Attention sinks of one block (``diagnose --sinks``): over images and heads, the mean of the largest
    attention mass one token receives from the patch queries, the share of heads where that exceeds 30%, where
    those sinks sit, and the mean mass on [CLS] and on all registers."""

    layer: int
    top_mass: float
    sink_heads: float
    sinks_on_patches: float | None = None
    sinks_on_background: float | None = None
    cls_share: float = 0.0
    register_share: float = 0.0


@dataclass(kw_only=True)
class ModelResult:
    """One model of a diagnose run; its arrays are in ``arrays_<key>.npz``."""

    key: str  # "a", "b" (--compare) or "s0", "s1", ... (--sweep)
    label: str
    spec: str
    registers: int
    depth: int
    grid: list[int]  # (rows, columns) of the patch grid
    images: int
    bad_images: list[BadImage] = field(default_factory=list)
    rule: Rule
    output: OutputStats
    layers: list[LayerStats] = field(default_factory=list)
    first_outlier_layer: int | None = None  # first block whose own tokens the auto rule splits (0-based)
    positions: Positions = field(default_factory=Positions)
    neighbors: Neighbors = field(default_factory=Neighbors)
    masks: Masks = field(default_factory=Masks)
    register_analysis: RegisterAnalysis = field(default_factory=RegisterAnalysis)
    sinks: list[SinkLayer] = field(default_factory=list)  # per block, with --sinks
    verdict: str = ""
    input_size: list[int] | None = None  # (H, W) the images were resized to
    preprocessing: str | None = None  # how the images were prepared (geometry, size, interpolation, mean/std)
    precision: str | None = None
    # the block the output-level statistics above use (rule, output, positions, neighbours, masks, registers,
    # pictures); None in runs written before --layer existed, which used the last block
    layer: int | None = None
    strongest_layer: int | None = None  # where the artifact signature is strongest, per strongest_definition
    strongest_definition: str = ""
    notes: list[str] = field(default_factory=list)  # what could not be measured on this model, and why

    @property
    def output_layer(self) -> int:
        """The analysed block (0-based), also for runs written before ``layer`` was recorded."""
        return self.depth - 1 if self.layer is None else self.layer


@dataclass(kw_only=True)
class DiagnoseSummary:
    """The first model's headline numbers, for readers of the JSON (the report reads ``models``)."""

    model: str
    images: int
    bad_images: int = 0
    rule: str = "auto"
    rule_value: float | None = None
    threshold: float | None = None
    outlier_ratio: float | None = None
    norm_ratio: float | None = None
    bimodal: bool | None = None
    bimodality: dict[str, Any] = field(default_factory=dict)
    first_outlier_layer: int | None = None
    verdict: str = ""
    layer: int | None = None  # the analysed block
    strongest_layer: int | None = None

    @classmethod
    def of(cls, m: ModelResult) -> DiagnoseSummary:
        stat = m.rule.statistic
        return cls(
            model=m.label,
            images=m.images,
            bad_images=len(m.bad_images),
            rule=m.rule.kind,
            rule_value=m.rule.value,
            threshold=m.rule.threshold,
            outlier_ratio=m.output.outlier_ratio,
            norm_ratio=m.output.norm_ratio,
            bimodal=m.rule.bimodal,
            bimodality={k: stat.get(k) for k in ("name", "value", "ashman_d", "delta_bic", "dip_ratio", "reason")},
            first_outlier_layer=m.first_outlier_layer,
            verdict=m.verdict,
            layer=m.output_layer,
            strongest_layer=m.strongest_layer,
        )


@dataclass(kw_only=True)
class DiagnoseResult:
    """``metrics.json`` of a diagnose run directory."""

    RESULT_FILE: ClassVar[str] = "metrics.json"  # its file in a run directory
    schema_version: int = SCHEMA_VERSION
    command: Literal["diagnose"] = "diagnose"
    vitreg_version: str = ""
    config: dict[str, Any] = field(default_factory=dict)  # the resolved DiagnoseConfig (and how it ran)
    summary: DiagnoseSummary | None = None
    models: list[ModelResult]

    @property
    def is_sweep(self) -> bool:
        """Keys s0, s1, ... mark a list of checkpoints or model sizes (Fig. 4b, 4c) rather than a comparison."""
        return len(self.models) > 1 and all(m.key.startswith("s") for m in self.models)
