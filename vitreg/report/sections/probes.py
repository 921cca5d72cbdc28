"""Probe section: local / global token probes, linear classification and dense probes, from probe.json."""

from __future__ import annotations

import html
import json
from pathlib import Path

from vitreg.report.sections import Section, fmt, table


def _pct(v: float | None) -> float | None:
    return None if v is None else 100 * v


def _local(loc: dict) -> str:
    rows = []
    for g in ("all", "normal", "outlier"):
        pos = loc["position"][g]
        row = {"tokens": g, "count": pos["count"], "position acc. (%)": _pct(pos["accuracy"])}
        for name, v in loc["pixel"].items():
            row[f"pixel MSE ({name})"] = v[g]["mse"]
        rows.append(row)
    note = (
        f'<p class="note">{html.escape(loc["protocol"])} ({loc["train_images"]} / {loc["test_images"]} images, '
        f"{html.escape(loc['tokens'])} tokens); chance position accuracy {fmt(100 * loc['chance_accuracy'])}%; "
        f"{html.escape(loc['pixel_units'])}. A dash means the group has no token.</p>"
    )
    return table(rows, caption="Local information (paper Fig. 5b)") + note


def _global(glo: dict) -> str:
    rows = []
    for name, r in glo["results"].items():
        rows.append(
            {
                "token": name,
                "images": r["images"],
                "top-1 mean (%)": _pct(r.get("mean")),
                "± std": _pct(r.get("std")),
                "note": r.get("note", ""),
            }
        )
    note = (
        f'<p class="note">Logistic regression on one token per image over seeds {glo["seeds"]}; '
        f"{glo['images_without_outlier']} of {glo['images']} images have no outlier token and are left out of the "
        f"outlier row; majority-class accuracy {fmt(100 * glo['chance_accuracy'])}%.</p>"
    )
    return table(rows, caption="Global information (paper Table 1)") + note


def render(run_dir: Path) -> list[Section]:
    path = Path(run_dir) / "probe.json"
    if not path.is_file():
        return []
    d = json.loads(path.read_text())
    t = d["threshold"]
    o = d["outliers"]
    parts = [
        f"<p>{html.escape(str(d['model']))} ({d['registers']} registers), {d['num_images']} images of "
        f"{html.escape(str(d['images']))}; outliers: last-block patch-token norm above "
        f"{'no threshold (none found)' if t['threshold'] is None else fmt(t['threshold'])} ({html.escape(t['rule'])}"
        f"), {o['outliers']} of {o['patch_tokens']} tokens.</p>"
    ]
    if "local" in d:
        parts.append(_local(d["local"]))
    if "global" in d:
        parts.append(_global(d["global"]))
    if "linear" in d:
        lin = d["linear"]
        rows = [{"features": k, "top-1 (%)": _pct(v)} for k, v in lin["top1"].items()]
        parts.append(
            table(rows, caption=f"Linear classification on frozen features ({lin['test_images']} held-out images)")
        )
    dense = d.get("dense", {})
    rows = []
    if "segmentation" in dense:
        s = dense["segmentation"]
        rows.append({"task": "segmentation", "metric": "mIoU (%)", "value": _pct(s["miou"]), "baseline": None})
    if "depth" in dense:
        s = dense["depth"]
        rows.append({"task": "depth", "metric": "RMSE", "value": s["rmse"], "baseline": s["rmse_mean_baseline"]})
    if rows:
        parts.append(table(rows, caption="Dense linear probes (baseline: the training mean everywhere)"))
    for name, why in d.get("skipped", {}).items():
        parts.append(f'<p class="note">{html.escape(name)}: skipped ({html.escape(why)}).</p>')
    return [Section("probes", "Token and linear probes", "".join(parts), order=150)]
