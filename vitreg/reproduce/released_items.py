"""Part I's figures and tables: the paper's analyses and the test-time-register paper's on a released model, read
from the stages of :mod:`vitreg.reproduce.released` (nothing typed in). Columns: the model without (``"0"``) and
with (``"1"``) one test-time register; claims name the model they were tested on and the paper they come from."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitreg.analysis.artifact_bar import (
    MAX_OUTLIER_RATIO_WITH_REGISTERS,
    MIN_NORM_RATIO,
    MIN_OUTLIER_RATIO,
    artifacts_gone,
    meets_norm_bar,
)
from vitreg.reproduce import paper
from vitreg.reproduce.claims import NOT_TESTED, claim, compare, corloc_gain, fmt, pct
from vitreg.reproduce.part import HEADINGS, Keep
from vitreg.reproduce.released import ReleasedDirs, ReleasedPlan, released_stages
from vitreg.reproduce.table import Table, corloc_summary, diagnosis_fields, probe_fields, row
from vitreg.results.diagnose import DiagnoseResult, ModelResult
from vitreg.results.fix import FixResult, NeuronsFile
from vitreg.results.flops import FlopsResult
from vitreg.results.probe import ProbeResult
from vitreg.results.reproduce import Claim, CorlocSummary, Item, ModelRow, OverheadRow, Row, Stat
from vitreg.results.rundir import has_result, read_result
from vitreg.stages import Stage

PART = "I"
COLUMNS = {"0": "released model", "1": "+1 test-time register"}
#: the test-time-register bars: a "few" neurons (at most this share of the searched blocks' MLP units), the output
#: kept ([CLS] cosine to the unfixed model), the cost negligible (added FLOPs)
MAX_NEURON_SHARE = 0.01
MIN_CLS_COSINE = 0.98
MAX_TTR_FLOPS = 0.01


@dataclass
class Released:
    """What Part I's stages wrote."""

    plan: ReleasedPlan
    model: str  # how claims name it
    fix: FixResult
    neurons: NeuronsFile
    fit: DiagnoseResult  # the fix run's diagnosis: the fit images, without (a) and with (b) the register
    measured: DiagnoseResult  # the measured images, without (a) and with (b)
    local_probe: ProbeResult | None  # on the measured photos
    global_probe: ProbeResult | None  # on labelled generated scenes
    lost: dict[tuple[str, bool], CorlocSummary]  # (features, with the register) -> CorLoc
    flops: FlopsResult
    hidden_units: int  # MLP units per block (the neuron search's candidates per block)

    @property
    def before(self) -> ModelResult:
        return self.measured.models[0]

    @property
    def after(self) -> ModelResult | None:
        """The measured diagnosis with the test-time register (None: no register neuron was found to move)."""
        return self.measured.models[1] if len(self.measured.models) > 1 else None

    @property
    def table(self) -> Table:
        a, b = self.before, self.after
        probes: dict[str, Any] = {}
        for p in (self.local_probe, self.global_probe):
            probes |= {k: v for k, v in (probe_fields(p) if p is not None else {}).items() if v is not None}
        table: Table = {0: {0: ModelRow(**diagnosis_fields(a), **probes)}}
        if b is not None:
            table[1] = {0: ModelRow(**diagnosis_fields(b))}
        return table


def read_released(plan: ReleasedPlan, out: Path) -> Released:
    from vitreg.models.load.checkpoints import architecture
    from vitreg.results.fix import read_neurons

    cfg = architecture(plan.model)
    dirs = ReleasedDirs(out)
    lost = {}
    for features in ("k", "v"):
        for ttr in (False, True):
            c = corloc_summary(dirs.lost(features, ttr))
            if c is not None:
                lost[(features, ttr)] = c
    return Released(
        plan=plan,
        model=_model_name(plan.model),
        fix=read_result(dirs.fix, FixResult),
        neurons=read_neurons(str(dirs.fix)),
        fit=read_result(dirs.fix, DiagnoseResult),
        measured=read_result(dirs.measured, DiagnoseResult),
        local_probe=_probe(dirs.probe("local")),
        global_probe=_probe(dirs.probe("global")),
        lost=lost,
        flops=read_result(dirs.flops, FlopsResult),
        hidden_units=round(cfg.embed_dim * cfg.mlp_ratio),
    )


def _probe(directory: Path) -> ProbeResult | None:
    return read_result(directory, ProbeResult) if has_result(directory, ProbeResult) else None


def _model_name(spec: str) -> str:
    from vitreg.models.load import zoo

    if spec.startswith(zoo.ZOO_PREFIX):
        model = zoo.get(spec).provenance.get("model")
        if model:
            return f"{str(model).split(' (')[0]} ({spec})"
    return spec


def _on(c: Claim, r: Released, source: str = paper.PAPER) -> Claim:
    c.model, c.paper = r.model, source
    return c


def _stat(v: float | None) -> Stat | None:
    return None if v is None else Stat(mean=float(v), std=0.0, n=1, of=1, values=[float(v)])


def _both(quantity: str, a: float | None, b: float | None, paper_a: object = None, paper_b: object = None) -> Row:
    return Row(quantity=quantity, paper=paper_a, paper_reg=paper_b, ours={"0": _stat(a), "1": _stat(b)})  # type: ignore[arg-type]


def norms(r: Released) -> Item:
    t = r.table
    a = r.before
    fa, fb = r.fit.models[0], (r.fit.models[1] if len(r.fit.models) > 1 else None)
    art = meets_norm_bar(a.rule.bimodal, a.output.outlier_ratio, a.output.norm_ratio)
    where = r.plan.measured_on
    return Item(
        id="I-fig3",
        part=PART,
        title=f"Fig. 3 on a released model: output patch-token norms ({where})",
        source=paper.ARTIFACTS["source"],
        columns=COLUMNS,
        rows=[
            row(
                f"outlier share of patch tokens, {where}",
                paper.ARTIFACTS["outlier_ratio"],
                None,
                t,
                lambda m: m.outlier_ratio,
            ),
            row("outlier norm / normal norm", paper.ARTIFACTS["norm_ratio"], None, t, lambda m: m.norm_ratio),
            row("bimodal (auto rule)", True, False, t, lambda m: float(bool(m.bimodal))),
            row("Ashman's D of the 2-Gaussian fit", None, None, t, lambda m: m.ashman_d),
            row("outlier threshold (norm)", paper.ARTIFACTS["cutoff"], None, t, lambda m: m.threshold),
            _both(
                f"outlier share, {r.plan.fitted_on} (the fit images)",
                fa.output.outlier_ratio,
                fb.output.outlier_ratio if fb else None,
            ),
        ],
        figures=["released_norm_hist.png"],
        note=f"{r.model}: {a.images} measured images, {fa.images} fit images; the paper's figures are DINOv2 ViT-g's. "
        f"Images prepared: {a.preprocessing or 'not recorded'}.",
        claims=[
            _on(
                claim(
                    "Without registers, a small share of patch tokens has a much higher norm (bimodal distribution)",
                    art,
                    f"{pct(_stat(a.output.outlier_ratio))} outliers at {fmt(_stat(a.output.norm_ratio))}x the normal "
                    f"norm, bimodal {a.rule.bimodal} (bar: bimodal, >= {100 * MIN_OUTLIER_RATIO:g}% and >= "
                    f"{MIN_NORM_RATIO:g}x)",
                ),
                r,
            ),
        ],
    )


def layers(r: Released) -> Item:
    a, b = r.before, r.after
    first, depth = a.first_outlier_layer, a.depth
    art = meets_norm_bar(a.rule.bimodal, a.output.outlier_ratio, a.output.norm_ratio)
    rows = [
        Row(
            quantity="first block with outliers / depth",
            paper=(paper.EMERGENCE["first_layer"] + 1) / paper.EMERGENCE["depth"],
            ours={"0": _stat((first + 1) / depth if first is not None else None)},
        ),
    ]
    for la, lb in zip(a.layers, b.layers if b is not None else [None] * len(a.layers), strict=True):
        rows.append(
            _both(
                f"block {la.layer}: outlier share (auto rule of the block; bimodal: {'yes' if la.bimodal else 'no'})",
                _block_share(la),
                _block_share(lb),
            )
        )
    return Item(
        id="I-fig4",
        part=PART,
        title="Fig. 4a on a released model: where in the network the outliers appear",
        source=paper.EMERGENCE["source"],
        columns=COLUMNS,
        rows=rows,
        figures=["released_layers.png"],
        claims=[
            _on(
                claim(
                    "Outliers appear part-way through the network, not at its input",
                    None if not art else compare(first, 0, operator.gt),
                    f"first block with an outlier mode (0-based): {first} of {depth}",
                    why_none="no artifacts by the bar of Fig. 3",
                ),
                r,
            ),
            _on(
                claim(
                    "Outliers appear only after a part of training",
                    None,
                    "",
                    why_none="a released model comes without its training: not testable here (Part II trains)",
                    none_status=NOT_TESTED,
                ),
                r,
            ),
        ],
    )


def _block_share(layer: object) -> float | None:
    """A block's share of patch tokens above its own auto threshold (0 where the block has no outlier mode)."""
    if layer is None:
        return None
    auto = getattr(layer, "auto_outlier_ratio", None)
    if auto is not None:
        return auto
    return getattr(layer, "outlier_ratio", None) if getattr(layer, "auto_threshold", None) is not None else 0.0


def local(r: Released) -> Item:
    t, loc = r.table, paper.LOCAL
    get_sim_o, get_sim_n = (lambda m: m.sim_outlier), (lambda m: m.sim_normal)
    base = t[0][0]
    checks = (
        (
            "Outliers sit on redundant patches (higher neighbour similarity than normal tokens)",
            base.sim_outlier,
            base.sim_normal,
            operator.gt,
            "input 4-neighbour cosine similarity",
        ),
    )
    probe_note = (
        f"the local probes on the same {r.local_probe.num_images} photos (half fit the probes, half test them; the "
        "paper used ImageNet)"
        if r.local_probe
        else "the local probes did not run"
    )
    return Item(
        id="I-fig5",
        part=PART,
        title="Fig. 5 on a released model: where outliers sit and what they hold",
        source=loc["source"],
        columns={"0": COLUMNS["0"]},
        rows=[
            row("input 4-neighbour cosine similarity: outliers", None, None, {0: t[0]}, get_sim_o),
            row("input 4-neighbour cosine similarity: normal", None, None, {0: t[0]}, get_sim_n),
            row("share of outliers on redundant patches", None, None, {0: t[0]}, lambda m: m.share_redundant),
            row("share of outliers on background (boxes)", None, None, {0: t[0]}, lambda m: m.background_outliers),
            row("share of all patches on background", None, None, {0: t[0]}, lambda m: m.background_patches),
            row(
                "position probe accuracy: normal",
                loc["position_accuracy"]["normal"],
                None,
                {0: t[0]},
                lambda m: m.position_normal,
            ),
            row(
                "position probe accuracy: outlier",
                loc["position_accuracy"]["outlier"],
                None,
                {0: t[0]},
                lambda m: m.position_outlier,
            ),
            row("position probe: chance", None, None, {0: t[0]}, lambda m: m.position_chance),
            row(
                "position regression error (patches): normal", None, None, {0: t[0]}, lambda m: m.position_error_normal
            ),
            row(
                "position regression error (patches): outlier",
                None,
                None,
                {0: t[0]},
                lambda m: m.position_error_outlier,
            ),
            row("position regression error: outlier - normal", None, None, {0: t[0]}, lambda m: m.position_error_gap),
            row("linear pixel probe MSE: normal", None, None, {0: t[0]}, lambda m: m.pixel_linear_normal),
            row("linear pixel probe MSE: outlier", None, None, {0: t[0]}, lambda m: m.pixel_linear_outlier),
            row("linear pixel probe MSE: outlier - normal", None, None, {0: t[0]}, lambda m: m.pixel_linear_gap),
            row("MLP pixel probe MSE: normal", None, None, {0: t[0]}, lambda m: m.pixel_mlp_normal),
            row("MLP pixel probe MSE: outlier", None, None, {0: t[0]}, lambda m: m.pixel_mlp_outlier),
        ],
        note=f"Neighbours and background on {r.plan.measured_on}; {probe_note}. {POSITION_NOTE}",
        claims=[
            _on(
                claim(
                    text,
                    compare(x, y, op),
                    f"{what}: outliers {_num(x)} vs normal {_num(y)}",
                    why_none="no outliers, or the probe did not run",
                ),
                r,
            )
            for text, x, y, op, what in checks
        ]
        + [_on(pixel_claim(base), r), _on(position_claim(base), r)],
    )


#: why the local-information claim is marked on the position regression, not on the paper's top-1
POSITION_NOTE = (
    "The claim that outliers hold less local information is marked on the ridge regression of each token's (row, "
    "column), not on the paper's position classifier: on a ViT-B the classifier's top-1 over the whole grid is a few "
    "percent for every token, too close to chance to tell outliers from normal tokens; the regression's error (in "
    "patches) is not, and its standard error is a bootstrap over photos (tokens of one photo are correlated)."
)


def pixel_claim(m: ModelRow) -> Claim:
    """Outliers reconstruct their pixels worse: the linear pixel probe's error on them exceeds the normal tokens' by
    more than twice the gap's standard error (paired bootstrap over photos), as the position claim is marked."""
    gap, se = m.pixel_linear_gap, m.pixel_linear_gap_se
    holds = None if gap is None or se is None else gap > 2 * se
    evidence = (
        f"linear pixel probe MSE: outliers {_num(m.pixel_linear_outlier)} vs normal {_num(m.pixel_linear_normal)}; "
        f"gap {_num(gap)} ± {_num(se)} (needs > 2 s.e.)"
    )
    return claim(
        "Outliers reconstruct their pixels worse (higher pixel-probe error, > 2 s.e.)",
        holds,
        evidence,
        why_none="no outliers, or the probe did not run",
    )


def position_claim(m: ModelRow) -> Claim:
    """Outliers hold less local information: their position-regression error exceeds the normal tokens' by more than
    twice the gap's standard error (paired bootstrap over photos)."""
    gap, se = m.position_error_gap, m.position_error_gap_se
    holds = None if gap is None or se is None else gap > 2 * se
    evidence = (
        f"position regression error (patches): outliers {_num(m.position_error_outlier)} vs normal "
        f"{_num(m.position_error_normal)}; gap {_num(gap)} ± {_num(se)} (needs > 2 s.e.); top-1 outliers "
        f"{_num(m.position_outlier)} vs normal {_num(m.position_normal)} (chance {_num(m.position_chance)})"
    )
    return claim(
        "Outliers hold less local information (higher position-regression error, > 2 s.e.)",
        holds,
        evidence,
        why_none="no outliers, or the probe did not run",
    )


def global_info(r: Released) -> Item:
    t, top1 = r.table, paper.GLOBAL["top1"]
    base = t[0][0]
    return Item(
        id="I-table1",
        part=PART,
        title="Table 1 on a released model: image classification from one token (global information)",
        source=paper.GLOBAL["source"],
        columns={"0": COLUMNS["0"]},
        rows=[
            row("[CLS] token", top1["cls"], None, {0: t[0]}, lambda m: m.global_cls),
            row("a normal patch token", top1["normal"], None, {0: t[0]}, lambda m: m.global_normal),
            row("an outlier patch token", top1["outlier"], None, {0: t[0]}, lambda m: m.global_outlier),
            row("chance (majority class)", None, None, {0: t[0]}, lambda m: m.global_chance),
        ],
        note=f"Labels: the shape of the largest object, on {r.global_probe.num_images if r.global_probe else 0} "
        "generated scenes at the model's input size (COCO's photos have many objects each, no single label).",
        claims=[
            _on(
                claim(
                    "Outlier tokens hold more global information than normal ones",
                    compare(base.global_outlier, base.global_normal, operator.gt),
                    f"top-1 from one token: outlier {_num(base.global_outlier)} vs normal "
                    f"{_num(base.global_normal)} ([CLS] {_num(base.global_cls)})",
                    why_none="no labelled images or no outliers",
                ),
                r,
            ),
        ],
    )


def test_time_registers(r: Released) -> Item:
    fix, search = r.fix, r.neurons.search
    sweep = fix.sweep
    chosen = sweep.at(sweep.chosen) if sweep is not None else None
    before = sweep.before if sweep is not None else None
    a, b = r.before, r.after
    blocks = sorted({n.layer for n in r.neurons.selected})
    searched = (search.top_layer + 1 if search.top_layer is not None else len(a.layers)) * r.hidden_units
    k = fix.top_k
    few = bool(k) and bool(sweep and sweep.cleared) and k <= MAX_NEURON_SHARE * searched
    cos = chosen.cls_cosine if chosen is not None else None
    held = fix.held_out
    held_cos = held.after.cls_cosine if held is not None and held.after is not None else None
    gone = artifacts_gone(b.rule.bimodal, b.output.outlier_ratio) if k and b is not None else None
    b_share = b.output.outlier_ratio if b is not None else None
    ttr = paper.TTR
    return Item(
        id="I-ttr",
        part=PART,
        title="Test-time registers on a released model",
        source=ttr["source"],
        columns=COLUMNS,
        rows=[
            Row(quantity="register neurons moved (auto top-k)", ours={"1": _stat(k)}),
            Row(quantity="their first block", ours={"1": _stat(blocks[0]) if blocks else None}),
            Row(quantity="MLP units searched", ours={"1": _stat(searched)}),
            _both(
                f"outlier share at the detection block, {r.plan.fitted_on} (fit)",
                before.outlier_share if before else None,
                chosen.outlier_share if chosen else None,
            ),
            _both(
                f"outlier share at the last block, {r.plan.measured_on} (held out)",
                a.output.outlier_ratio,
                b_share,
            ),
            _both(
                "bimodal, held out", float(bool(a.rule.bimodal)), float(bool(b.rule.bimodal)) if b is not None else None
            ),
            Row(quantity="[CLS] output cosine to the unfixed model, fit images", ours={"1": _stat(cos)}),
            Row(
                quantity=f"[CLS] output cosine to the unfixed model, {r.plan.measured_on} (held out)",
                ours={"1": _stat(held_cos)},
            ),
            Row(quantity="FLOPs added by the test-time register", ours={"1": _stat(fix.flops_overhead)}),
        ],
        note=f"{fix.outcome}. Fitted on {r.plan.fitted_on}; measured on {r.plan.measured_on}. The neurons are in the "
        "fix stage's neurons.json (any command takes them with --test-time-registers).",
        figures=["released_maps_a.png", "released_maps_b.png"],
        claims=[
            _on(
                claim(
                    "A few MLP units (register neurons) write the high-norm outliers",
                    few if k else None,
                    f"{k} of {searched} units searched (bar: cleared with at most {100 * MAX_NEURON_SHARE:g}% of "
                    f"them), in block(s) {', '.join(map(str, blocks)) or 'none'}",
                    why_none=fix.outcome,
                ),
                r,
                ttr["source"],
            ),
            _on(
                claim(
                    "Moving them into one test-time register removes the outliers, on images they were not fitted on",
                    gone,
                    f"{r.plan.measured_on}: {pct(_stat(a.output.outlier_ratio))} -> "
                    f"{pct(_stat(b_share))} (bar: <= {100 * MAX_OUTLIER_RATIO_WITH_REGISTERS:g}% and "
                    f"not bimodal)",
                    why_none=fix.outcome,
                ),
                r,
                ttr["source"],
            ),
            _on(
                claim(
                    "The model's output is kept ([CLS] output nearly unchanged), on images the neurons were not "
                    "fitted on",
                    None if held_cos is None else held_cos >= MIN_CLS_COSINE,
                    f"cosine {_num(held_cos)} on {r.plan.measured_on}, {_num(cos)} on the fit images (bar: >= "
                    f"{MIN_CLS_COSINE} held out)",
                    why_none=fix.outcome,
                ),
                r,
                ttr["source"],
            ),
            _on(
                claim(
                    "A test-time register costs almost nothing",
                    None if fix.flops_overhead is None else fix.flops_overhead < MAX_TTR_FLOPS,
                    f"+{_num(100 * fix.flops_overhead if fix.flops_overhead is not None else None)}% FLOPs "
                    f"(bar: < {100 * MAX_TTR_FLOPS:g}%)",
                    why_none=fix.outcome,
                ),
                r,
                ttr["source"],
            ),
        ],
    )


def lost(r: Released) -> Item:
    clip = paper.CORLOC["rows"]["OpenCLIP"]

    def cor(features: str, ttr: bool) -> float | None:
        c = r.lost.get((features, ttr))
        return c.corloc if c is not None else None

    def images(features: str) -> int | None:
        c = r.lost.get((features, False))
        return c.images if c is not None else None

    def gain(features: str) -> tuple[bool | None, str]:
        return corloc_gain(_stat(cor(features, False)), _stat(cor(features, True)), images(features))

    keys_gain, keys_text = gain("k")
    no_change, values_text = _within_noise(cor("v", False), cor("v", True), images("v"))
    if not r.fix.top_k:  # no register neuron to move: the "with" runs are the original model again
        keys_gain = no_change = None
        keys_text = values_text = f"no test-time register was added: {r.fix.outcome}"
    present = bool(r.lost)
    return Item(
        id="I-table3",
        part=PART,
        title="Table 3 on a released model: LOST CorLoc without and with a test-time register",
        source=paper.CORLOC["source"] + "; the paper's values beside ours are OpenCLIP's COCO20k (values)",
        columns=COLUMNS,
        rows=[
            _both("CorLoc, keys", cor("k", False), cor("k", True)),
            _both("CorLoc, values", cor("v", False), cor("v", True), clip[0][2], clip[1][2]),
        ],
        note=(
            f"LOST (bias 0) on the last block's features, coco-mini resized to the model's input size, "
            f"{images('k')} images."
            if present
            else "coco-mini is not present: LOST was not run."
        ),
        claims=[
            _on(
                claim(
                    "Test-time registers improve LOST object discovery (keys)",
                    keys_gain,
                    keys_text,
                    why_none=keys_text or "coco-mini is not present",
                    none_status=NOT_TESTED,
                ),
                r,
                paper.TTR["source"],
            ),
            _on(
                claim(
                    "With value features, registers leave CLIP's CorLoc about unchanged (Table 3, OpenCLIP: "
                    "38.8 -> 37.1 on VOC07)",
                    no_change,
                    values_text,
                    why_none="coco-mini is not present",
                    none_status=NOT_TESTED,
                ),
                r,
            ),
        ],
    )


def _within_noise(a: float | None, b: float | None, images: int | None) -> tuple[bool | None, str]:
    """Whether |b - a| is within twice the binomial standard error of the difference, and the evidence."""
    if a is None or b is None or not images:
        return None, ""
    margin = 2 * math.sqrt(max(a * (1 - a), 1e-12) / images + max(b * (1 - b), 1e-12) / images)
    return abs(b - a) <= margin, (
        f"{a:.3f} -> {b:.3f} on {images} images (change {b - a:+.3f}; unchanged means within {margin:.3f}, 2 s.e.)"
    )


def overhead(r: Released) -> Item:
    rows = [
        OverheadRow(
            model=m.model,
            registers=x.registers,
            flops_overhead=x.flops_overhead,
            added_params=x.added_params,
            tokens=x.tokens,
        )
        for m in r.flops.models
        for x in m.rows
    ]
    return Item(
        id="I-fig12",
        part=PART,
        title="Fig. 12 on a released model: FLOPs of registers",
        source=paper.OVERHEAD["source"],
        overhead=rows,
    )


def released_items(r: Released) -> list[Item]:
    found = [norms(r), layers(r), local(r), global_info(r), test_time_registers(r), lost(r), overhead(r)]
    for it in found:
        for c in it.claims:
            c.item = it.id
    return found


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3g}"


@dataclass
class ReleasedPart:
    """Part I: the paper's analyses on a released model with the artifacts, and test-time registers on it."""

    plan: ReleasedPlan
    out: Path
    key: str = "I"
    heading: str = HEADINGS["I"]
    _stages: list[Stage] | None = field(default=None, repr=False)

    def stages(self) -> list[Stage]:
        if self._stages is None:  # built once: Part II's stages take the fix stage from these
            self._stages = released_stages(self.plan, self.out)
        return self._stages

    def items(self) -> list[Item]:
        return released_items(read_released(self.plan, self.out))

    def figures(self, keep: Keep) -> None:
        """The norm histogram and the per-block norms of the released model without and with its test-time register
        (measured images), and their example maps."""
        from vitreg.report import plot_maps, plot_norms
        from vitreg.results.rundir import load_run

        run = load_run(ReleasedDirs(self.out).measured)
        for m, label in zip(run.models, ("released model", "+1 test-time register"), strict=False):
            m.label = label
        keep("released_norm_hist.png", plot_norms.norm_histogram(run, log_x=True))
        keep("released_layers.png", plot_norms.layer_norms(run))
        for m in run.models:
            keep(f"released_maps_{m.key}.png", plot_maps.examples(m))
