"""Diagnose sections: summary table, norm explorer, norm figures, where outliers sit, pictures, registers.

Every number comes from the run's metrics.json or arrays_<key>.npz; figures are the PNGs drawn by
``vitreg.report.figures`` (drawn here when the run directory has none yet).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from markupsafe import Markup

from vitreg.report import templating
from vitreg.report.explorer import explorer_html
from vitreg.report.figures import draw_figures, read_manifest, safe_key
from vitreg.report.sections import Section, figure, fmt, table
from vitreg.report.templating import join
from vitreg.results.rundir import DiagnoseRun, ModelRun, is_diagnose_run, load_run


def render(run_dir: Path) -> list[Section]:
    if not is_diagnose_run(run_dir):
        return []
    run = load_run(run_dir)
    manifest = read_manifest(run_dir) or draw_figures(run_dir)
    figs = {name: Path(run_dir) / "figures" / f for name, f in manifest["figures"].items()}

    def fig(name: str, caption: str | None, alt: str = "") -> Markup:
        return figure(figs[name], alt or name, caption) if name in figs else Markup("")

    sections = [
        Section("diagnose-summary", "Diagnosis summary", _summary(run), order=10),
        Section("diagnose-explorer", "Norm explorer", _explorer(run), order=20),
        Section("diagnose-norms", "Output norms", _norms(run, manifest["log_x"], fig), order=30),
        Section("diagnose-layers", "Norms along layers", _layers(run, fig), order=40),
        Section("diagnose-where", "Where the outliers sit", _where(run, fig), order=50),
    ]
    # one caption under all models' figures: they differ only by model
    pictures = join(fig(f"examples_{safe_key(m.key)}", None, f"examples {m.label}") for m in run.models)
    if pictures:
        body = join([pictures, templating.render("figure.html.j2", img=Markup(""), caption=_EXAMPLES_CAPTION)])
        sections.append(Section("diagnose-pictures", "Pictures", body, order=60))
    regs = join(fig(f"registers_{safe_key(m.key)}", None, f"registers {m.label}") for m in run.models)
    if regs:
        caption = templating.render("figure.html.j2", img=Markup(""), caption=_REGISTERS_CAPTION)
        sections.append(
            Section("diagnose-registers", "[CLS] and registers", join([regs, caption, _register_table(run)]), order=70)
        )
    return sections


_EXAMPLES_CAPTION = (
    "Per image: the input with outlier patches outlined (red), the patch-token norm map (Fig. 16 of Darcet et al.), "
    "the first principal component of the patch features, whitened, colormap over [-3σ, +3σ] (Fig. 15), and the "
    "last-layer attention of [CLS] and of each register upsampled to image size (Fig. 1, 9)."
)
_REGISTERS_CAPTION = (
    "Mean last-layer attention map of [CLS] and of each register over the dataset (positional focus), and the "
    "pairwise cosine similarity of register attention maps (lower = more specialised), as in the reproducibility study."
)


def _pct(v: Any) -> str | None:
    return None if v is None else f"{100 * float(v):.2f}%"


def _rule(m: ModelRun) -> str:
    rule = m.result.rule
    return f"{rule.kind} {fmt(rule.value)}" if rule.value is not None else rule.kind


def _statistic(m: ModelRun) -> str | None:
    stat = m.result.rule.statistic
    if stat.get("value") is None:
        return None
    return f"{stat.get('name', 'statistic')} = {fmt(stat['value'])}"


def _statistic_details(run: DiagnoseRun) -> Markup:
    """Every field of each model's bimodality statistic (the summary cell shows only its headline value)."""
    rows = [
        {"model": m.label} | {k: v for k, v in m.result.rule.statistic.items() if not isinstance(v, dict | list)}
        for m in run.models
        if m.result.rule.statistic
    ]
    if not rows:
        return Markup("")
    return table(rows, list(dict.fromkeys(k for r in rows for k in r)))


def _background(m: ModelRun, value: float | None) -> str | None:
    return _pct(value) if m.result.masks.available else "no masks"


def _summary(run: DiagnoseRun) -> Markup:
    rows = []
    for m in run.models:
        r = m.result
        rows.append(
            {
                "model": m.label,
                "registers": m.num_registers,
                "images": r.images,
                "rule": _rule(m),
                "threshold": "none (no outliers)" if m.threshold is None else fmt(m.threshold, 4),
                "outlier ratio": _pct(r.output.outlier_ratio),
                "norm ratio": r.output.norm_ratio,
                "bimodal": r.rule.bimodal,
                "bimodality statistic": _statistic(m),
                "first outlier layer": r.first_outlier_layer,
                "strongest block": r.strongest_layer,
                "analysed block": r.output_layer,
                "outliers on background": _background(m, r.masks.share_outliers_background),
                "outliers on redundant patches": _pct(r.neighbors.share_outliers_redundant),
                "verdict": r.verdict,
            }
        )
    summary = run.metrics.summary
    headline = summary.verdict if summary is not None and summary.verdict else run.models[0].result.verdict
    norms = [
        {
            "model": m.label,
            "patch tokens": m.result.output.patch_tokens,
            "outliers": m.result.output.outliers,
            "mean norm normal": m.result.output.mean_norm_normal,
            "mean norm outlier": m.result.output.mean_norm_outlier,
            "median norm normal": m.result.output.median_norm_normal,
            "median norm outlier": m.result.output.median_norm_outlier,
            "[CLS] norm": m.result.output.cls_norm_mean,
            "register norms": ", ".join(fmt(v) for v in m.result.output.register_norms_mean) or None,
            "images prepared": m.result.preprocessing,
        }
        for m in run.models
    ]
    bad = [
        (m.label, [(b.path, b.reason) for b in m.result.bad_images[:50]], max(0, len(m.result.bad_images) - 50))
        for m in run.models
        if m.result.bad_images
    ]
    return templating.render(
        "diagnose_summary.html.j2",
        headline=headline,
        columns=[c for c in rows[0] if c != "verdict"],  # the verdict, a sentence, goes on a full-width row below
        rows=rows,
        notes=[(m.label, n) for m in run.models for n in m.result.notes],
        statistic=_statistic_details(run),
        norms=table(norms, caption=_output_caption(run)),
        bad_images=bad,
        version=run.metrics.vitreg_version or "?",
        config=json.dumps(run.metrics.config, indent=2, default=str),
    )


def _output_caption(run: DiagnoseRun) -> str:
    blocks = {(m.result.output_layer, m.result.depth) for m in run.models}
    if all(layer == depth - 1 for layer, depth in blocks):
        return "Output norms (last block, before the final norm: the paper's norms)"
    which = ", ".join(f"{m.label}: block {m.result.output_layer} of {m.result.depth}" for m in run.models)
    return f"Norms of the analysed block's output tokens (--layer; {which})"


def _explorer(run: DiagnoseRun) -> Markup:
    note = (
        "Move the threshold over the histogram of output patch-token norms: the outlier count and ratio update for "
        "every model (counts from the saved histogram)."
    )
    return join([templating.render("note.html.j2", text=note), explorer_html(run)])


def _norms(run: DiagnoseRun, log_x: bool, fig: Callable[..., Markup]) -> Markup:
    primary, other = ("norm_hist_logx", "norm_hist") if log_x else ("norm_hist", "norm_hist_logx")
    caption = (
        "Output patch-token norms (Fig. 3 and 7 of Darcet et al.): dashed line = the run's threshold, "
        "triangles = mean [CLS] and register norms."
    )
    alt = fig(other, caption)
    more = (
        templating.render("details.html.j2", summary=f"{'linear' if log_x else 'log'} x axis", body=alt) if alt else ""
    )
    return join([fig(primary, caption), more])


def _layers(run: DiagnoseRun, fig: Callable[..., Markup]) -> Markup:
    first = fig(
        "layers",
        "Patch-token norm distribution of every block output (Fig. 4a): colour = share of the layer's tokens; lines = "
        "median, 98th percentile and max; crosses = per-layer threshold; red dashed line = first outlier layer; "
        "bars = outlier ratio per layer.",
    )
    sweep = fig("sweep", "Outlier ratio and norm ratio per entry: along training (Fig. 4b) or model size (Fig. 4c).")
    return join([first, sweep, *(_layer_table(m) for m in run.models)])


_STRONGEST = "background:#fff1bf"  # the strongest block's row
_ANALYSED = "font-weight:bold"  # the analysed block's row (--layer)


def _layer_table(m: ModelRun) -> Markup:
    """Every block of one model: the auto rule's test, the outliers under the run's rule and the norm share the auto
    outliers hold, with the analysed block in bold and the strongest block shaded (and both named in the last
    column, for readers without colour)."""
    r = m.result
    if not r.layers:
        return Markup("")
    rule = r.rule.kind
    columns = ["block", "median", "p98", "max", "bimodal", "Ashman's D", f"outliers ({rule})", f"norm ratio ({rule})"]
    columns += [] if rule == "auto" else ["outliers (auto)"]
    columns += ["outlier norm share", ""]
    rows = []
    for d in r.layers:
        cells = [d.layer, d.median, d.p98, d.max, d.bimodal, d.ashman_d, _pct(d.outlier_ratio), d.norm_ratio]
        cells += [] if rule == "auto" else [_pct(d.auto_outlier_ratio)]
        marks = [
            t for t, on in (("analysed", d.layer == r.output_layer), ("strongest", d.layer == r.strongest_layer)) if on
        ]
        cells += [_pct(d.outlier_norm_share), " + ".join(marks) or None]
        style = ";".join(st for st, on in ((_STRONGEST, "strongest" in marks), (_ANALYSED, "analysed" in marks)) if on)
        rows.append(dict(zip(columns, cells, strict=True)) | ({"__style__": style} if style else {}))
    strongest = "none (no block has an outlier mode)" if r.strongest_layer is None else f"block {r.strongest_layer}"
    caption = (
        f"{m.label}: per block. Analysed block (bold): {r.output_layer} of {r.depth} (--layer; the outlier rule, "
        f"positions, neighbours, background share and pictures use its tokens). Strongest artifact signature "
        f"(shaded): {strongest}."
    )
    note = (
        templating.render("note.html.j2", text=f"Strongest block: {r.strongest_definition}.")
        if r.strongest_definition
        else ""
    )
    return join([table(rows, columns, caption=caption), note])


def _where(run: DiagnoseRun, fig: Callable[..., Markup]) -> Markup:
    positions = fig(
        "positions", "Share of tokens above the threshold at each grid position over the dataset (Fig. 10)."
    )
    neighbors = fig(
        "neighbors",
        "Cosine similarity of each input patch embedding to its 4 neighbours, outliers vs normal patches, as "
        "densities (Fig. 5a). Artifacts in the paper's sense sit on redundant patches (similarity near 1).",
    )
    rows = [
        {
            "model": m.label,
            "mean similarity, outliers": m.result.neighbors.mean_sim_outlier,
            "mean similarity, normal": m.result.neighbors.mean_sim_normal,
            "outliers on redundant patches": _pct(m.result.neighbors.share_outliers_redundant),
            "outliers on background": _background(m, m.result.masks.share_outliers_background),
            "patches on background": _background(m, m.result.masks.share_patches_background),
        }
        for m in run.models
    ]
    return join([positions, neighbors, table(rows, caption="Redundancy and background share (from metrics.json)")])


def _register_table(run: DiagnoseRun) -> Markup:
    rows = [
        {
            "model": m.label,
            "registers": m.num_registers,
            "mean off-diagonal similarity": m.result.register_analysis.similarity_mean_offdiag,
        }
        for m in run.models
    ]
    return table(rows, caption="Register specialisation (from metrics.json)")
