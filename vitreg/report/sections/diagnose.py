"""Diagnose sections: summary table, norm explorer, norm figures, where outliers sit, pictures, registers.

Every number comes from the run's metrics.json or arrays_<key>.npz; figures are the PNGs drawn by
``vitreg.report.figures`` (drawn here when the run directory has none yet).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from vitreg.report.explorer import explorer_html
from vitreg.report.figures import draw_figures, read_manifest, safe_key
from vitreg.report.rundir import DiagnoseRun, ModelRun, is_diagnose_run, load_run
from vitreg.report.sections import Section, fmt, img_tag, table


def render(run_dir: Path) -> list[Section]:
    if not is_diagnose_run(run_dir):
        return []
    run = load_run(run_dir)
    manifest = read_manifest(run_dir) or draw_figures(run_dir)
    figs = {name: Path(run_dir) / "figures" / f for name, f in manifest["figures"].items()}

    def fig(name: str, caption: str | None, alt: str = "") -> str:
        if name not in figs:
            return ""
        text = f'<p class="figure-caption">{html.escape(caption)}</p>' if caption else ""
        return img_tag(figs[name], alt or name) + text

    sections = [
        Section("diagnose-summary", "Diagnosis summary", _summary(run), order=10),
        Section("diagnose-explorer", "Norm explorer", _explorer(run), order=20),
        Section("diagnose-norms", "Output norms", _norms(run, manifest["log_x"], fig), order=30),
        Section("diagnose-layers", "Norms along layers", _layers(run, fig), order=40),
        Section("diagnose-where", "Where the outliers sit", _where(run, fig), order=50),
    ]
    # one caption under all models' figures: they differ only by model
    pictures = "".join(fig(f"examples_{safe_key(m.key)}", None, f"examples {m.label}") for m in run.models)
    if pictures:
        body = pictures + f'<p class="figure-caption">{html.escape(_EXAMPLES_CAPTION)}</p>'
        sections.append(Section("diagnose-pictures", "Pictures", body, order=60))
    regs = "".join(fig(f"registers_{safe_key(m.key)}", None, f"registers {m.label}") for m in run.models)
    if regs:
        body = regs + f'<p class="figure-caption">{html.escape(_REGISTERS_CAPTION)}</p>' + _register_table(run)
        sections.append(Section("diagnose-registers", "[CLS] and registers", body, order=70))
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


def _g(d: dict[str, Any] | None, *path: str) -> Any:
    """Nested get that tolerates missing levels: a run may lack an optional block."""
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def _pct(v: Any) -> str | None:
    return None if v is None else f"{100 * float(v):.2f}%"


def _rule(m: ModelRun) -> str:
    rule = m.result.get("rule") or {}
    kind, value = rule.get("kind", "?"), rule.get("value")
    return f"{kind} {fmt(value)}" if value is not None else str(kind)


def _statistic(m: ModelRun) -> str | None:
    stat = _g(m.result, "rule", "statistic")
    if not isinstance(stat, dict) or stat.get("value") is None:
        return None
    return f"{stat.get('name', 'statistic')} = {fmt(stat['value'])}"


def _statistic_details(run: DiagnoseRun) -> str:
    """Every field of each model's bimodality statistic (the summary cell shows only its headline value)."""
    rows = []
    for m in run.models:
        stat = _g(m.result, "rule", "statistic")
        if isinstance(stat, dict):
            rows.append({"model": m.label} | {k: v for k, v in stat.items() if not isinstance(v, dict | list)})
    if not rows:
        return ""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return f"<details><summary>bimodality test details</summary>{table(rows, columns)}</details>"


def _summary(run: DiagnoseRun) -> str:
    rows = []
    for m in run.models:
        r = m.result
        rows.append(
            {
                "model": m.label,
                "registers": m.num_registers,
                "images": r.get("images"),
                "rule": _rule(m),
                "threshold": "none (no outliers)" if m.threshold is None else fmt(m.threshold, 4),
                "outlier ratio": _pct(_g(r, "output", "outlier_ratio")),
                "norm ratio": _g(r, "output", "norm_ratio"),
                "bimodal": _g(r, "rule", "bimodal"),
                "bimodality statistic": _statistic(m),
                "first outlier layer": r.get("first_outlier_layer"),
                "outliers on background": _pct(_g(r, "masks", "share_outliers_background"))
                if _g(r, "masks", "available")
                else "no masks",
                "outliers on redundant patches": _pct(_g(r, "neighbors", "share_outliers_redundant")),
                "verdict": r.get("verdict"),
            }
        )
    headline = _g(run.metrics, "summary", "verdict") or run.models[0].result.get("verdict")
    out = f'<p class="verdict">{html.escape(str(headline))}</p>' if headline else ""
    out += _summary_table(rows)
    out += _statistic_details(run)
    norms = [
        {
            "model": m.label,
            "patch tokens": _g(m.result, "output", "patch_tokens"),
            "outliers": _g(m.result, "output", "outliers"),
            "mean norm normal": _g(m.result, "output", "mean_norm_normal"),
            "mean norm outlier": _g(m.result, "output", "mean_norm_outlier"),
            "median norm normal": _g(m.result, "output", "median_norm_normal"),
            "median norm outlier": _g(m.result, "output", "median_norm_outlier"),
            "[CLS] norm": _g(m.result, "output", "cls_norm_mean"),
            "register norms": ", ".join(fmt(v) for v in _g(m.result, "output", "register_norms_mean") or []) or None,
        }
        for m in run.models
    ]
    out += table(norms, caption="Output norms (last block, before the final norm: the paper's norms)")
    for m in run.models:
        bad = m.result.get("bad_images") or []
        if bad:
            items = "".join(
                f"<li>{html.escape(str(b.get('path')))}: {html.escape(str(b.get('reason')))}</li>" for b in bad[:50]
            )
            more = f"<li>… and {len(bad) - 50} more</li>" if len(bad) > 50 else ""
            summary = f"{html.escape(m.label)}: {len(bad)} bad images skipped"
            out += f"<details><summary>{summary}</summary><ul>{items}{more}</ul></details>"
    cfg = json.dumps(run.metrics.get("config") or {}, indent=2, default=str)
    version = run.metrics.get("vitreg_version", "?")
    summary = f"resolved config (vitreg {html.escape(str(version))})"
    out += f"<details><summary>{summary}</summary><pre>{html.escape(cfg)}</pre></details>"
    return out


def _summary_table(rows: list[dict[str, Any]]) -> str:
    """One row of numbers per model with its verdict on a full-width row below (a sentence too long for a cell)."""
    columns = [c for c in rows[0] if c != "verdict"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = ""
    for r in rows:
        body += "<tr>" + "".join(f"<td>{fmt(r.get(c))}</td>" for c in columns) + "</tr>"
        verdict = f"<b>verdict:</b> {fmt(r.get('verdict'))}"
        body += f'<tr class="verdict-row"><td colspan="{len(columns)}">{verdict}</td></tr>'
    caption = "<caption>One row per model (all values from metrics.json)</caption>"
    return f'<table class="summary">{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _explorer(run: DiagnoseRun) -> str:
    return (
        '<p class="note">Move the threshold over the histogram of output patch-token norms: the outlier count and '
        "ratio update for every model (counts from the saved histogram).</p>" + explorer_html(run)
    )


def _norms(run: DiagnoseRun, log_x: bool, fig) -> str:
    primary, other = ("norm_hist_logx", "norm_hist") if log_x else ("norm_hist", "norm_hist_logx")
    caption = (
        "Output patch-token norms (Fig. 3 and 7 of Darcet et al.): dashed line = the run's threshold, "
        "triangles = mean [CLS] and register norms."
    )
    body = fig(primary, caption)
    alt = fig(other, caption)
    if alt:
        body += f"<details><summary>{'linear' if log_x else 'log'} x axis</summary>{alt}</details>"
    return body


def _layers(run: DiagnoseRun, fig) -> str:
    body = fig(
        "layers",
        "Patch-token norm distribution of every block output (Fig. 4a): colour = share of the layer's tokens; lines = "
        "median, 98th percentile and max; crosses = per-layer threshold; red dashed line = first outlier layer; "
        "bars = outlier ratio per layer.",
    )
    body += fig("sweep", "Outlier ratio and norm ratio per entry: along training (Fig. 4b) or model size (Fig. 4c).")
    rows = [
        {
            "model": m.label,
            "layer": d.get("layer"),
            "median": d.get("median"),
            "p98": d.get("p98"),
            "max": d.get("max"),
            "threshold": d.get("threshold"),
            "bimodal": d.get("bimodal"),
            "outlier ratio": _pct(d.get("outlier_ratio")),
            "norm ratio": d.get("norm_ratio"),
        }
        for m in run.models
        for d in m.result.get("layers") or []
    ]
    if rows:
        body += f"<details><summary>per-layer numbers</summary>{table(rows)}</details>"
    return body


def _where(run: DiagnoseRun, fig) -> str:
    body = fig("positions", "Share of tokens above the threshold at each grid position over the dataset (Fig. 10).")
    body += fig(
        "neighbors",
        "Cosine similarity of each input patch embedding to its 4 neighbours, outliers vs normal patches, as "
        "densities (Fig. 5a). Artifacts in the paper's sense sit on redundant patches (similarity near 1).",
    )
    rows = [
        {
            "model": m.label,
            "mean similarity, outliers": _g(m.result, "neighbors", "mean_sim_outlier"),
            "mean similarity, normal": _g(m.result, "neighbors", "mean_sim_normal"),
            "outliers on redundant patches": _pct(_g(m.result, "neighbors", "share_outliers_redundant")),
            "outliers on background": _pct(_g(m.result, "masks", "share_outliers_background"))
            if _g(m.result, "masks", "available")
            else "no masks",
            "patches on background": _pct(_g(m.result, "masks", "share_patches_background"))
            if _g(m.result, "masks", "available")
            else "no masks",
        }
        for m in run.models
    ]
    return body + table(rows, caption="Redundancy and background share (from metrics.json)")


def _register_table(run: DiagnoseRun) -> str:
    rows = [
        {
            "model": m.label,
            "registers": m.num_registers,
            "mean off-diagonal similarity": m.register_analysis.get("similarity_mean_offdiag"),
        }
        for m in run.models
    ]
    return table(rows, caption="Register specialisation (from metrics.json)")
