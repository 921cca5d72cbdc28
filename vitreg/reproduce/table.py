"""Every trained model's numbers, read from its stages' result files into one :class:`ModelRow`, and the
aggregations over seeds that the paper's tables are made of."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from vitreg.reproduce.claims import agg
from vitreg.reproduce.pipeline import LabDirs
from vitreg.reproduce.plan import Plan
from vitreg.results.diagnose import DiagnoseResult, ModelResult
from vitreg.results.lost import LostResult
from vitreg.results.probe import ProbeResult
from vitreg.results.reproduce import CorlocSummary, ModelRow, Row, Stat
from vitreg.results.rundir import has_result, read_result
from vitreg.results.train import TrainingSummary, read_training_log

Table = dict[int, dict[int, ModelRow]]  # registers -> seed -> row
Get = Callable[[ModelRow], Any]


def diagnosis_fields(m: ModelResult) -> dict[str, Any]:
    """The diagnose numbers of one model that the tables (and the lab) compare."""
    first, depth = m.first_outlier_layer, m.depth
    return dict(
        outlier_ratio=m.output.outlier_ratio,
        norm_ratio=m.output.norm_ratio,
        bimodal=m.rule.bimodal,
        ashman_d=m.rule.statistic.get("ashman_d"),
        threshold=m.rule.threshold,
        mean_norm_outlier=m.output.mean_norm_outlier,
        mean_norm_normal=m.output.mean_norm_normal,
        first_outlier_layer=first,
        depth=depth,
        first_layer_fraction=(first + 1) / depth if first is not None and depth else None,
        sim_outlier=m.neighbors.mean_sim_outlier,
        sim_normal=m.neighbors.mean_sim_normal,
        share_redundant=m.neighbors.share_outliers_redundant,
        background_outliers=m.masks.share_outliers_background,
        background_patches=m.masks.share_patches_background,
        cls_norm=m.output.cls_norm_mean,
        verdict=m.verdict,
    )


def probe_fields(p: ProbeResult) -> dict[str, Any]:
    loc, glob, lin, dense = p.local, p.global_probe, p.linear, p.dense
    seg = dense.segmentation if dense else None
    depth = dense.depth if dense else None
    out: dict[str, Any] = {}
    if loc is not None:
        out |= dict(
            position_normal=loc.position["normal"].accuracy,
            position_outlier=loc.position["outlier"].accuracy,
            position_chance=loc.chance_accuracy,
        )
        reg = loc.position_regression
        if reg is not None:
            g = reg.groups
            out |= dict(
                position_error_normal=g["normal"].error,
                position_error_normal_se=g["normal"].se,
                position_error_outlier=g["outlier"].error,
                position_error_outlier_se=g["outlier"].se,
                position_error_all=g["all"].error,
                position_error_gap=reg.gap.gap if reg.gap else None,
                position_error_gap_se=reg.gap.se if reg.gap else None,
            )
        for head, groups in loc.pixel.items():
            out |= {f"pixel_{head}_normal": groups["normal"].mse, f"pixel_{head}_outlier": groups["outlier"].mse}
            gap = loc.pixel_gap.get(head)
            if gap is not None:
                out |= {f"pixel_{head}_gap": gap.gap, f"pixel_{head}_gap_se": gap.se}
    if glob is not None:
        out |= {f"global_{k}": v.mean for k, v in glob.results.items()} | {"global_chance": glob.chance_accuracy}
    if lin is not None:
        out |= dict(linear_cls=lin.top1.get("cls"), linear_cls_mean=lin.top1.get("cls+mean_patch"))
    if seg is not None:
        # a probe whose every object class has IoU 0 predicts background everywhere: its mIoU compares nothing
        out |= dict(seg_miou=seg.miou, seg_background_only=background_only(seg.iou_per_class))
    if depth is not None:
        out |= dict(depth_rmse=depth.rmse, depth_rmse_baseline=depth.rmse_mean_baseline)
    return out


def background_only(iou: dict[str, float] | None) -> bool | None:
    if not iou:
        return None
    return all(not v for k, v in iou.items() if str(k) != "0")


def corloc_summary(directory: Path) -> CorlocSummary | None:
    if not has_result(directory, LostResult):
        return None
    r = read_result(directory, LostResult)
    best = max(r.results, key=lambda c: -1 if c.corloc is None else c.corloc)
    zero = r.at_bias(0.0)
    return CorlocSummary(corloc=zero.corloc, images=zero.images, protocol=r.protocol, best=best)


def read_table(plan: Plan, out: Path) -> Table:
    """{registers: {seed: row}} read from the stage directories."""
    table: Table = {n: {} for n in plan.registers}
    dirs = LabDirs(out)
    for seed in plan.seeds:
        diag = read_result(dirs.diagnose(seed), DiagnoseResult)
        for n, m in zip(plan.registers, diag.models, strict=True):
            probe = read_result(dirs.probe(seed, n), ProbeResult)
            table[n][seed] = ModelRow(
                train=TrainingSummary.of(read_training_log(dirs.model(seed, n, plan.zoo_entry(seed, n)))),
                corloc_synthetic=corloc_summary(dirs.lost("synthetic", seed, n)),
                corloc_coco=corloc_summary(dirs.lost("coco", seed, n)),
                **diagnosis_fields(m),
                **probe_fields(probe),
            )
    return table


def series(table: Table, n: int, get: Get) -> Stat | None:
    """``get(row)`` aggregated over the seeds of ``n`` registers."""
    return agg([get(row) for row in table.get(n, {}).values()])


def values(table: Table, n: int, get: Get) -> list[Any]:
    return [get(r) for r in table.get(n, {}).values()]


def every_seed(table: Table, n: int, test: Callable[[ModelRow], bool | None]) -> bool | None:
    """Whether ``test(row)`` holds for every seed of ``n`` registers; None when a row lacks the data."""
    rows = list(table.get(n, {}).values())
    if not rows:
        return None
    got = [test(r) for r in rows]
    return None if any(g is None for g in got) else all(got)


def count(table: Table, n: int, get: Get) -> str:
    vals = values(table, n, get)
    return f"{sum(bool(v) for v in vals)}/{len(vals)}"


def row(quantity: str, paper: Any, paper_reg: Any, table: Table, get: Get) -> Row:
    """One table row: the paper's value (without / with registers) and ours for every register count."""
    return Row(quantity=quantity, paper=paper, paper_reg=paper_reg, ours={str(n): series(table, n, get) for n in table})


def corloc_images(table: Table, n: int, get: Callable[[ModelRow], CorlocSummary | None]) -> int | None:
    got = [(c.images if c else None) for c in values(table, n, get)]
    return min(got) if got and all(got) else None  # type: ignore[type-var]


def corloc_of(get: Callable[[ModelRow], CorlocSummary | None]) -> Get:
    return lambda r: c.corloc if (c := get(r)) is not None else None
