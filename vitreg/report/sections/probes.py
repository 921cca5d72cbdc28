"""Probe section: local / global token probes, linear classification and dense probes, from probe.json."""

from __future__ import annotations

from pathlib import Path

from markupsafe import Markup

from vitreg.report.sections import Section, fmt, note, paragraph, table
from vitreg.report.templating import join
from vitreg.results.probe import GlobalProbe, LocalProbes, ProbeResult
from vitreg.results.rundir import has_result, read_result


def _pct(v: float | None) -> float | None:
    return None if v is None else 100 * v


def _local(loc: LocalProbes) -> Markup:
    rows = []
    for g in ("all", "normal", "outlier"):
        pos = loc.position[g]
        row: dict[str, object] = {"tokens": g, "count": pos.count, "position acc. (%)": _pct(pos.accuracy)}
        for name, v in loc.pixel.items():
            row[f"pixel MSE ({name})"] = v[g].mse
        rows.append(row)
    text = (
        f"{loc.protocol} ({loc.train_images} / {loc.test_images} images, {loc.tokens} tokens); chance position "
        f"accuracy {fmt(100 * loc.chance_accuracy)}%; {loc.pixel_units}. A dash means the group has no token."
    )
    parts = [table(rows, caption="Local information (paper Fig. 5b)"), note(text)]
    reg = loc.position_regression
    if reg is not None:
        reg_rows = [
            {"tokens": g, "count": e.count, f"position error ({reg.units})": e.error, "± s.e. (by photo)": e.se}
            for g, e in reg.groups.items()
        ]
        gap = (
            ""
            if reg.gap is None
            else (
                f" Outliers minus normal tokens: {fmt(reg.gap.gap)} ± {fmt(reg.gap.se)} patches (paired bootstrap over "
                f"photos; {reg.gap.photos_with_outliers} photos hold outliers)."
            )
        )
        parts += [
            table(reg_rows, caption=f"Position regression (ridge, alpha {reg.alpha:g})"),
            note(
                "The ridge regression of each token's (row, column), chosen on held-out fit photos: its error "
                f"tells groups apart where the classifier's top-1 is near chance.{gap}"
            ),
        ]
    return join(parts)


def _global(glo: GlobalProbe) -> Markup:
    rows = [
        {"token": name, "images": r.images, "top-1 mean (%)": _pct(r.mean), "± std": _pct(r.std), "note": r.note or ""}
        for name, r in glo.results.items()
    ]
    text = (
        f"Logistic regression on one token per image over seeds {glo.seeds}; {glo.images_without_outlier} of "
        f"{glo.images} images have no outlier token and are left out of the outlier row; majority-class accuracy "
        f"{fmt(100 * glo.chance_accuracy)}%."
    )
    return join([table(rows, caption="Global information (paper Table 1)"), note(text)])


def _dense(d: ProbeResult) -> Markup:
    rows: list[dict[str, object]] = []
    seg = d.dense.segmentation if d.dense else None
    depth = d.dense.depth if d.dense else None
    if seg is not None:
        rows.append({"task": "segmentation", "metric": "mIoU (%)", "value": _pct(seg.miou), "baseline": None})
    if depth is not None:
        rows.append({"task": "depth", "metric": "RMSE", "value": depth.rmse, "baseline": depth.rmse_mean_baseline})
    return table(rows, caption="Dense linear probes (baseline: the training mean everywhere)")


def render(run_dir: Path) -> list[Section]:
    if not has_result(run_dir, ProbeResult):
        return []
    d = read_result(run_dir, ProbeResult)
    t, o = d.threshold, d.outliers
    thr = "no threshold (none found)" if t.threshold is None else fmt(t.threshold)
    parts = [
        paragraph(
            f"{d.model} ({d.registers} registers), {d.num_images} images of {d.images}; outliers: last-block "
            f"patch-token norm above {thr} ({t.rule}), {o.outliers} of {o.patch_tokens} tokens."
        ),
        *(note(n) for n in d.notes),
    ]
    if d.local is not None:
        parts.append(_local(d.local))
    if d.global_probe is not None:
        parts.append(_global(d.global_probe))
    if d.linear is not None:
        rows = [{"features": k, "top-1 (%)": _pct(v)} for k, v in d.linear.top1.items()]
        parts.append(
            table(rows, caption=f"Linear classification on frozen features ({d.linear.test_images} held-out images)")
        )
    parts.append(_dense(d))
    parts += [note(f"{name}: skipped ({why}).") for name, why in d.skipped.items()]
    return [Section("probes", "Token and linear probes", join(parts), order=150)]
