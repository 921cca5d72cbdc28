"""What `vitreg fix` writes: ``neurons.json`` (a :class:`NeuronsFile`: the register neurons and how many to move,
what ``--test-time-registers`` reads) and ``fix.json`` (a :class:`FixResult`: the top-k sweep and the outliers per
layer before and after). Plain data, no torch: :mod:`vitreg.analysis.register_neurons` returns these types."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, overload

from vitreg.errors import ConfigError, RunDirError
from vitreg.results.codec import SCHEMA_VERSION, check_schema, from_json, read_json


@dataclass(frozen=True)
class RegisterNeuron:
    """One MLP hidden unit; unpacks as ``layer, index = neuron``."""

    layer: int  # block index (0-based)
    index: int  # hidden unit of that block's MLP (an input of mlp.fc2)
    score: float  # mean |activation| at the outlier patches, averaged over images with outliers
    selectivity: float  # score / mean |activation| at the other patches of those images
    sparsity: float  # share of the other patches where the unit is below SPARSE_LEVEL x its outlier mean

    def __iter__(self) -> Iterator[int]:
        yield self.layer
        yield self.index


@dataclass(kw_only=True)
class NeuronSearch(Sequence[RegisterNeuron]):
    """The ranked register neurons (a sequence: ``search[:10]``, ``for layer, index in search``) and how they were
    found. Empty, with ``reason``, when the model has no outliers to move."""

    neurons: list[RegisterNeuron]
    detect_layer: int
    top_layer: int | None
    rule: str
    value: float | None
    threshold: float | None  # outlier threshold on the detection layer's patch norms; None = no outliers
    bimodal: bool | None
    outlier_share: float  # of the detection layer's patch tokens
    norm_ratio: float | None  # mean outlier norm / median patch norm at the detection layer
    images: int
    images_with_outliers: int
    onset: list[float | None] = field(default_factory=list)  # per block up to the detection layer
    reason: str = ""

    @overload
    def __getitem__(self, i: int) -> RegisterNeuron: ...
    @overload
    def __getitem__(self, i: slice) -> list[RegisterNeuron]: ...
    def __getitem__(self, i: int | slice) -> RegisterNeuron | list[RegisterNeuron]:
        return self.neurons[i]

    def __len__(self) -> int:
        return len(self.neurons)


@dataclass(kw_only=True)
class SweepPoint:
    k: int  # register neurons moved (0: the extra tokens alone, no neuron moved)
    outlier_share: float  # detection-layer patch tokens above the original threshold
    max_patch_norm: float  # largest detection-layer patch norm over the images
    register_norm: float | None  # mean detection-layer norm of the test-time registers
    cls_cosine: float | None  # mean cosine of the final (normed) [CLS] to the original model's; None without [CLS]
    top1: float | None  # with labels and a classification head
    agreement: float | None  # share of images whose predicted class did not change


@dataclass(kw_only=True)
class TopKSweep:
    threshold: float
    clear: float  # cleared: at most this fraction of the original outlier share left
    before: SweepPoint  # the original model (no test-time register)
    points: list[SweepPoint] = field(default_factory=list)  # sorted by k
    chosen: int = 0
    cleared: bool = False

    def at(self, k: int) -> SweepPoint:
        return next(p for p in self.points if p.k == k)


@dataclass(kw_only=True)
class NeuronsFile:
    """``neurons.json``: the ranked neurons of one model and how many of them its test-time registers move."""

    RESULT_FILE: ClassVar[str] = "neurons.json"  # its file in a run directory
    schema_version: int = SCHEMA_VERSION
    command: Literal["fix"] = "fix"
    model: str  # the label of the model they were found in
    spec: str
    registers: int  # test-time registers to add
    top_k: int  # neurons to move: the first top_k of search.neurons
    search: NeuronSearch

    @property
    def selected(self) -> list[RegisterNeuron]:
        return self.search.neurons[: self.top_k]


@dataclass(kw_only=True)
class FixLayer:
    """One block: patch tokens above the original model's outlier threshold at that block, before and after."""

    layer: int
    threshold: float | None  # the original's auto threshold at this block (None: not bimodal there)
    share_before: float
    share_after: float
    threshold_after: float | None  # the fixed model's own auto threshold (None: no outliers left by that rule)


@dataclass(kw_only=True)
class FixResult:
    """``fix.json`` of a `vitreg fix` run directory (the diagnosis of both models is its metrics.json)."""

    RESULT_FILE: ClassVar[str] = "fix.json"  # its file in a run directory
    schema_version: int = SCHEMA_VERSION
    command: Literal["fix"] = "fix"
    model: str
    registers: int
    top_k: int  # 0 when there was nothing to move
    auto: bool  # top_k chosen by the sweep
    outcome: str  # one line: what the fix did
    reason: str = ""  # why nothing was moved
    sweep: TopKSweep | None = None
    layers: list[FixLayer] = field(default_factory=list)
    flops_overhead: float | None = None  # the extra tokens' FLOPs over the original's, at its input size
    saved_model: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    detect_layer: int | None = None  # the block (0-based) whose outputs marked the outliers; None in older runs
    held_out: HeldOut | None = None  # the chosen fix measured on other images (``--held-out SRC``)
    notes: list[str] = field(default_factory=list)  # what could not be measured on this model, and why


@dataclass(kw_only=True)
class HeldOut:
    """The fix on images the neurons were not fitted on: the original (``before``) and the fixed model (``after``),
    outliers counted above the fit's threshold, [CLS] cosine of the fixed model's to the original's."""

    images: int
    source: str
    directory: str  # their diagnosis (a and b), a diagnose run directory inside the fix's
    before: SweepPoint
    after: SweepPoint | None = None  # None: no register neuron was found to move


def read_neurons(path: str | Path) -> NeuronsFile:
    """``neurons.json`` (a path or a `vitreg fix` run directory); ConfigError naming the file when it is unusable."""
    p = Path(path)
    if p.is_dir():
        p = p / NeuronsFile.RESULT_FILE
    try:
        data = read_json(p)
        check_schema(data, p)
        out = from_json(NeuronsFile, data, p)
    except RunDirError as err:
        raise ConfigError(f"--test-time-registers: {err}") from None
    if out.top_k < 1 or out.registers < 1 or not out.selected:
        raise ConfigError(f"{p}: no register neurons to move ({out.search.reason or 'top_k is 0'})")
    return out
