"""Probe section: local / global token probes, linear classification and dense probes, from probe.json."""

from __future__ import annotations

import html
from pathlib import Path

from vitreg.report.sections import Section, fmt, table
from vitreg.results.probe import GlobalProbe, LocalProbes, ProbeResult
from vitreg.results.rundir import has_result, read_result


def _pct(v: float | None) -> float | None:
    return None if v is None else 100 * v


def _local(loc: LocalProbes) -> str:
    rows = []
    for g in ("all", "normal", "outlier"):
        pos = loc.position[g]
        row: dict[str, object] = {"tokens": g, "count": pos.count, "position acc. (%)": _pct(pos.accuracy)}
        for name, v in loc.pixel.items():
            row[f"pixel MSE ({name})"] = v[g].mse
        rows.append(row)
    note = (
        f'<p class="note">{html.escape(loc.protocol)} ({loc.train_images} / {loc.test_images} images, '
        f"{html.escape(loc.tokens)} tokens); chance position accuracy {fmt(100 * loc.chance_accuracy)}%; "
        f"{html.escape(loc.pixel_units)}. A dash means the group has no token.</p>"
    )
    return table(rows, caption="Local information (paper Fig. 5b)") + note


def _global(glo: GlobalProbe) -> str:
    rows = [
        {"token": name, "images": r.images, "top-1 mean (%)": _pct(r.mean), "± std": _pct(r.std), "note": r.note or ""}
        for name, r in glo.results.items()
    ]
    note = (
        f'<p class="note">Logistic regression on one token per image over seeds {glo.seeds}; '
        f"{glo.images_without_outlier} of {glo.images} images have no outlier token and are left out of the "
        f"outlier row; majority-class accuracy {fmt(100 * glo.chance_accuracy)}%.</p>"
    )
    return table(rows, caption="Global information (paper Table 1)") + note


def _dense(d: ProbeResult) -> str:
    rows: list[dict[str, object]] = []
    seg = d.dense.segmentation if d.dense else None
    depth = d.dense.depth if d.dense else None
    if seg is not None:
        rows.append({"task": "segmentation", "metric": "mIoU (%)", "value": _pct(seg.miou), "baseline": None})
    if depth is not None:
        rows.append({"task": "depth", "metric": "RMSE", "value": depth.rmse, "baseline": depth.rmse_mean_baseline})
    return table(rows, caption="Dense linear probes (baseline: the training mean everywhere)") if rows else ""


def render(run_dir: Path) -> list[Section]:
    if not has_result(run_dir, ProbeResult):
        return []
    d = read_result(run_dir, ProbeResult)
    t, o = d.threshold, d.outliers
    thr = "no threshold (none found)" if t.threshold is None else fmt(t.threshold)
    parts = [
        f"<p>{html.escape(d.model)} ({d.registers} registers), {d.num_images} images of {html.escape(d.images)}; "
        f"outliers: last-block patch-token norm above {thr} ({html.escape(t.rule)}), {o.outliers} of "
        f"{o.patch_tokens} tokens.</p>",
        *(f'<p class="note">{html.escape(n)}</p>' for n in d.notes),
    ]
    if d.local is not None:
        parts.append(_local(d.local))
    if d.global_probe is not None:
        parts.append(_global(d.global_probe))
    if d.linear is not None:
        rows = [{"features": k, "top-1 (%)": _pct(v)} for k, v in d.linear.top1.items()]
        parts.append(table(rows, caption=f"Linear classification on frozen features ({d.linear.test_images} held-out "
                                         "images)"))  # fmt: skip
    parts.append(_dense(d))
    for name, why in d.skipped.items():
        parts.append(f'<p class="note">{html.escape(name)}: skipped ({html.escape(why)}).</p>')
    return [Section("probes", "Token and linear probes", "".join(parts), order=150)]
