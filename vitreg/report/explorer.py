"""The interactive norm explorer: a threshold slider over the output-norm histogram that updates the outlier count
and ratio of every model live (explorer.js draws it). The histogram counts travel as JSON inside the page.

The slider moves over the saved histogram's bin edges, so each position's count ("tokens with norm >= edge") is
exact, the same number ``rundir.outlier_count`` gives in Python.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from markupsafe import Markup

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


def explorer_html(run: DiagnoseRun) -> Markup:
    """The explorer's markup, filled with the initial counts (so the numbers read right even before the script)."""
    from markupsafe import Markup

    from vitreg.report.templating import render

    data = explorer_data(run)
    edges = np.asarray(data["edges"])
    start = data["start"]
    t0 = float(edges[start])
    rows = []
    for m in data["models"]:
        n = outlier_count(edges, np.asarray(m["counts"]), t0)
        ratio = n / m["total"] if m["total"] else 0.0
        rows.append(
            dict(
                key=m["key"],
                label=m["label"],
                total=m["total"],
                count=n,
                ratio=f"{100 * ratio:.2f}%",
                run_threshold="none (no outliers)" if m["threshold"] is None else f"{m['threshold']:.4g}",
                run_outliers="–" if m["run_outliers"] is None else str(m["run_outliers"]),
            )
        )
    if not rows:
        raise ValueError("the explorer needs at least one model")  # explorer_data always keeps the first model
    return render(
        "explorer.html.j2",
        # the data for the script: JSON, with "<" escaped so no label can end the script element; markup by
        # construction (the template must not HTML-escape what the script parses as JSON)
        data_json=Markup(_json_for_script(data)),
        last_edge=len(edges) - 1,
        start=start,
        t0_repr=repr(t0),
        t0_text=f"{t0:.4g}",
        first=rows[0],
        rows=rows,
        skipped=", ".join(data["skipped"]),
    )
