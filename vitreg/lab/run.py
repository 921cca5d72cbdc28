"""Train and diagnose every model of a grid (cached and resumable like reproduce), then tabulate them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from vitreg import atomic
from vitreg.analysis.artifact_bar import meets_norm_bar
from vitreg.jobs.diagnose import DiagnoseConfig, ModelEntry
from vitreg.jobs.specs import ImageSpec
from vitreg.lab.grid import Grid, overrides
from vitreg.lab.table import lab_markdown
from vitreg.results.diagnose import DiagnoseResult, ModelResult
from vitreg.results.lab import LabResult, LabRow
from vitreg.results.rundir import read_result, write_result
from vitreg.results.train import TrainingSummary, read_training_log
from vitreg.stages import STAMP, Log, Stage, diagnose_stage, evaluation_scenes, read_json, run_stages, train_stage


def lab_stages(grid: Grid, out: Path, threads: int | None) -> tuple[list[Stage], dict[tuple[str, int, int], Stage]]:
    """(every stage, trainings first; {(point, seed, registers): training stage})."""
    trains, diags, index = [], [], {}
    for name in grid.points:
        base = grid.config(name)
        scenes = evaluation_scenes(base, grid.scene_seed)
        src = "device-scenes" if base.data.kind == "device" else "synthetic"  # the renderer the models learned on
        for seed in grid.seeds:
            models = []
            for n in grid.registers:
                cfg = dataclasses.replace(
                    base, seed=seed, registers=[n], progress=False, threads=threads if threads else base.threads
                )
                s = train_stage(f"{name}: seed {seed}, {n} registers", cfg, out / name / f"seed{seed}" / f"reg{n}", out)
                trains.append(s)
                models.append(s)
                index[(name, seed, n)] = s
            diag_cfg = DiagnoseConfig(
                models=[ModelEntry(key=f"s{i}", spec=str(m.directory)) for i, m in enumerate(models)],
                images=ImageSpec(src=src, scenes=scenes, limit=grid.diagnose_limit),
                examples=2,
                sinks=True,
                out=str(out / name / f"seed{seed}" / "diagnose"),
            )
            diags.append(diagnose_stage(f"{name}: seed {seed}, diagnose", diag_cfg, models, out, report=False))
    return trains + diags, index


MAX_EXPORT_BYTES = 16 * 1024 * 1024  # an exported model's fp16 weights (what a GPU machine may send back per file)


def export_models(index: dict[tuple[str, int, int], Stage], export: Path, command: str) -> None:
    """Every trained model of the lab as fp16 safetensors with its provenance, in the zoo's layout."""
    from vitreg.errors import ConfigError
    from vitreg.train.publish import add_to_zoo

    for (point, seed, n), stage in index.items():
        entry = add_to_zoo(stage.directory, f"{point}-seed{seed}-reg{n}", command, root=export, limit_bytes=None)
        if entry.provenance["bytes"] > MAX_EXPORT_BYTES:
            raise ConfigError(f"{entry.weights} is {entry.provenance['bytes'] / 2**20:.1f} MiB, over 16 MiB")


def run_lab(
    grid: Grid,
    out: Path,
    jobs: int = 1,
    threads: int | None = None,
    log: Log = print,
    export: Path | None = None,
    command: str = "vitreg lab",
) -> LabResult:
    """Train and diagnose every model of ``grid`` into ``out`` (cached), tabulate them; with ``export``, also write
    each model as fp16 weights with provenance into ``export`` (``command``: what to record as its command)."""
    out = Path(out)
    atomic.make_dirs(out)
    if jobs > 1 and threads is None:
        threads = 1  # side-by-side trainings each on one thread: no oversubscription
    stages, index = lab_stages(grid, out, threads)
    run_stages(stages, jobs, log)
    result = LabResult(grid=vars(grid).copy(), rows=lab_rows(grid, out, index))
    write_result(out, result)
    atomic.write_text(out / "lab.md", lab_markdown(grid, result.rows))
    if export is not None:
        export_models(index, Path(export), command)
    return result


def sink_fields(m: ModelResult) -> dict[str, Any]:
    """The lab table's sink columns from a diagnosed model's per-block sink statistics (none without them)."""
    if not m.sinks:
        return {}
    top = max(m.sinks, key=lambda s: (s.sink_heads, s.top_mass))
    return {
        "sink_layer": top.layer,
        "sink_heads": top.sink_heads,
        "sink_top_mass": top.top_mass,
        "sinks_on_background": top.sinks_on_background,
        "cls_share_last": m.sinks[-1].cls_share,
    }


def lab_rows(grid: Grid, out: Path, index: dict[tuple[str, int, int], Stage]) -> list[LabRow]:
    rows = []
    for name, point in grid.points.items():
        for seed in grid.seeds:
            metrics = read_result(out / name / f"seed{seed}" / "diagnose", DiagnoseResult)
            for n, m in zip(grid.registers, metrics.models, strict=True):
                stage = index[(name, seed, n)]
                stamp = read_json(stage.directory / STAMP) or {}
                train = TrainingSummary.of(read_training_log(stage.directory))
                rows.append(
                    LabRow(
                        point=name,
                        overrides=" ".join(overrides(point)),
                        seed=seed,
                        registers=n,
                        top1=train.top1,
                        minutes=(stamp.get("seconds") or 0) / 60,
                        artifacts=meets_norm_bar(m.rule.bimodal, m.output.outlier_ratio, m.output.norm_ratio),
                        outlier_ratio=m.output.outlier_ratio,
                        norm_ratio=m.output.norm_ratio,
                        bimodal=m.rule.bimodal,
                        ashman_d=m.rule.statistic.get("ashman_d"),
                        first_outlier_layer=m.first_outlier_layer,
                        sim_outlier=m.neighbors.mean_sim_outlier,
                        sim_normal=m.neighbors.mean_sim_normal,
                        background_outliers=m.masks.share_outliers_background,
                        background_patches=m.masks.share_patches_background,
                        register_similarity=m.register_analysis.output_similarity_mean_offdiag,
                        **sink_fields(m),
                    )
                )
    return rows
