"""The interactive norm explorer: a threshold slider over the output-norm histogram that updates the outlier count
and ratio of every model live (explorer.js draws it). The histogram counts travel as JSON inside the page.

The slider moves over the saved histogram's bin edges, so each position's count ("tokens with norm >= edge") is
exact, the same number ``rundir.outlier_count`` gives in Python.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

import numpy as np

from vitreg.results.rundir import DiagnoseRun, outlier_count

MARGIN_BINS = 4  # empty bins kept on each side of the occupied range so the extremes stay visible


def dom_key(key: str) -> str:
    """A model key usable inside an element id."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", key)


def explorer_data(run: DiagnoseRun) -> dict[str, Any]:
    """Histogram counts of the last block's patch-token norms, trimmed to the occupied bins, for each model sharing
    the first model's bin edges (a shared slider needs shared edges), plus the initial slider index."""
    edges = run.models[0].arrays["hist_edges"]
    models = [m for m in run.models if np.array_equal(m.arrays["hist_edges"], edges)]
    counts = np.stack([m.output_counts() for m in models]).astype(np.int64)  # (M, E)
    nz = np.flatnonzero(counts.sum(0))
    lo = max(int(nz[0]) - MARGIN_BINS, 0) if len(nz) else 0
    hi = min(int(nz[-1]) + 1 + MARGIN_BINS, len(edges) - 1) if len(nz) else len(edges) - 1
    thresholds = [m.threshold for m in models if m.threshold is not None]
    for t in thresholds:  # keep every run threshold on the slider's track
        i = int(np.searchsorted(edges, t))
        lo, hi = min(lo, max(i - 1, 0)), max(hi, min(i + 1, len(edges) - 1))
    # start at the first edge at or above the run's threshold (tokens between the two are the only difference from
    # metrics.json, whose count the page shows alongside); with no outliers, above every token, as the verdict says
    start = min(int(np.searchsorted(edges, thresholds[0])), hi) if thresholds else hi
    entries = []
    for m, c in zip(models, counts, strict=True):
        out = m.result.output
        entries.append(
            dict(
                key=dom_key(m.key),
                label=m.label,
                counts=c[lo:hi].tolist(),
                total=int(c.sum()),
                threshold=m.threshold,
                run_outliers=out.outliers,
                run_ratio=out.outlier_ratio,
                cls=out.cls_norm_mean,
                registers=out.register_norms_mean,
            )
        )
    skipped = [m.label for m in run.models if m not in models]
    return dict(edges=edges[lo : hi + 1].astype(np.float64).tolist(), start=start - lo, models=entries, skipped=skipped)


def _json_for_script(data: Any) -> str:
    # "<" escaped so a label holding "</script>" cannot end the script element
    return json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")


def explorer_html(run: DiagnoseRun) -> str:
    """The explorer's markup, filled with the initial counts (so the numbers read right even before the script)."""
    data = explorer_data(run)
    edges = np.asarray(data["edges"])
    start = data["start"]
    t0 = float(edges[start])
    rows = []
    first = None
    for m in data["models"]:
        n = outlier_count(edges, np.asarray(m["counts"]), t0)
        ratio = n / m["total"] if m["total"] else 0.0
        first = first or (n, ratio, m)
        run_t = "none (no outliers)" if m["threshold"] is None else f"{m['threshold']:.4g}"
        run_n = "–" if m["run_outliers"] is None else str(m["run_outliers"])
        k = m["key"]
        rows.append(
            f'<tr data-key="{k}"><td><span class="swatch" data-key="{k}"></span>{html.escape(m["label"])}</td>'
            f'<td>{m["total"]}</td><td id="outlier-count-{k}">{n}</td>'
            f'<td id="outlier-ratio-{k}">{100 * ratio:.2f}%</td><td>{run_t}</td><td>{run_n}</td></tr>'
        )
    if first is None:
        raise ValueError("the explorer needs at least one model")  # explorer_data always keeps the first model
    n0, r0, m0 = first
    note = ""
    if data["skipped"]:
        names = html.escape(", ".join(data["skipped"]))
        note = f'<p class="note">Not in the explorer (different histogram bins): {names}</p>'
    return f"""
<div class="explorer" id="norm-explorer">
<script type="application/json" id="explorer-data">{_json_for_script(data)}</script>
<canvas id="norm-canvas" width="760" height="260" aria-label="output-norm histogram with threshold"></canvas>
<div class="controls">
  <label for="norm-slider">threshold</label>
  <input type="range" id="norm-slider" min="0" max="{len(edges) - 1}" step="1" value="{start}">
  <output id="norm-threshold" data-threshold="{t0!r}">{t0:.4g}</output>
  <label><input type="checkbox" id="explorer-logx" checked> log x</label>
  <label><input type="checkbox" id="explorer-logy" checked> log y</label>
  <button type="button" id="explorer-reset">run's threshold</button>
</div>
<p class="readout"><b>{html.escape(m0["label"])}</b>: <span id="outlier-count">{n0}</span> of {m0["total"]} patch tokens
 at or above the threshold (<span id="outlier-ratio">{100 * r0:.2f}%</span>)</p>
<table class="explorer-table"><thead><tr><th>model</th><th>patch tokens</th><th>outliers here</th><th>ratio here</th>
<th>run's threshold</th><th>run's outliers</th></tr></thead><tbody>{"".join(rows)}</tbody></table>
{note}
<p class="note">The slider moves over the saved histogram's bin edges and counts tokens with norm at or above the
edge, so a position near the run's threshold can differ from the run's exact count by the tokens inside one bin.</p>
</div>"""
