"""The artifact lab: search training settings for the one where high-norm artifacts emerge, by measurement.

A grid file names a base training config and a set of points (config overrides). Every point is trained for every
seed with each register count, then all its models are diagnosed on the same held-out scenes; the table of results
(setting, seed, registers, top-1, outlier share, norm ratio, bimodality, where the outliers sit, minutes) is written
to OUT/lab.md and OUT/lab.json. Stages are cached exactly like `vitreg reproduce`'s, and ``jobs`` trainings can run
side by side, each in its own process (one thread each unless ``threads`` says otherwise).

Grid file (YAML)::

    base: artifact_lab          # packaged config name or YAML path
    seeds: [0, 1, 2]
    registers: [0, 4]
    diagnose_limit: 256
    points:
      d12_lr1e-3: {depth: 12, lr: 1.0e-3}
      d6: {depth: 6}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vitreg.config import ConfigError
from vitreg.models import model_config
from vitreg.reproduce.collect import (
    MIN_NORM_RATIO,
    MIN_OUTLIER_RATIO,
    diagnose_summary,
    meets_norm_bar,
    training_summary,
)
from vitreg.reproduce.stages import (
    STAMP,
    Stage,
    _read_json,
    diagnose_stage,
    run_side_by_side,
    run_stage,
    scene_options,
    train_stage,
)
from vitreg.train.config import load_train_config
from vitreg.train.data import scene_config

GRID_KEYS = {"base", "seeds", "registers", "diagnose_limit", "points", "scene_seed"}


@dataclass
class Grid:
    base: str
    points: dict[str, dict[str, Any]]
    seeds: list[int] = field(default_factory=lambda: [0])
    registers: list[int] = field(default_factory=lambda: [0, 4])
    diagnose_limit: int = 256
    scene_seed: int = 101


def load_grid(path: Path) -> Grid:
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a grid file holds a mapping (base, seeds, registers, points)")
    unknown = sorted(set(data) - GRID_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(GRID_KEYS))}")
    if not isinstance(data.get("points"), dict) or not data["points"]:
        raise ConfigError(f"{path}: 'points' must map names to config overrides")
    grid = Grid(**data)
    for name, point in grid.points.items():
        if not isinstance(point, dict):
            raise ConfigError(f"{path}: point {name!r} must be a mapping of config keys to values")
        # a bad key or value fails here, naming it, before any training
        cfg = load_train_config(grid.base, _overrides(point))
        if cfg.data.kind == "synthetic":
            scene_config(cfg.data, model_config(cfg.model, img_size=cfg.img_size).img_size)
    return grid


def _overrides(point: dict[str, Any]) -> list[str]:
    out = []
    for k, v in point.items():
        if isinstance(v, dict):
            out += [f"{k}.{kk}={_yaml_value(vv)}" for kk, vv in v.items()]
        else:
            out.append(f"{k}={_yaml_value(v)}")
    return out


def _yaml_value(v: Any) -> str:
    """A value as ``key=value`` overrides spell it (lists are comma-separated, like ``registers=0,4``)."""
    if isinstance(v, (list, tuple)):
        return ",".join(_yaml_value(x) for x in v)
    return "null" if v is None else "true" if v is True else "false" if v is False else str(v)


def lab_stages(grid: Grid, out: Path, threads: int | None) -> tuple[list[Stage], list[Stage], dict]:
    """(training stages, diagnose stages, {(point, seed, registers): training stage})."""
    trains, diags, index = [], [], {}
    extra = [f"threads={threads}"] if threads else []
    for name, point in grid.points.items():
        ov = _overrides(point)
        cfg = load_train_config(grid.base, ov)
        hw = model_config(cfg.model, img_size=cfg.img_size).img_size
        for seed in grid.seeds:
            models = []
            for n in grid.registers:
                d = out / name / f"seed{seed}" / f"reg{n}"
                overrides = [*ov, *extra, f"seed={seed}", f"registers={n}", "progress=false"]
                s = train_stage(f"{name}: seed {seed}, {n} registers", d, out, grid.base, overrides)
                trains.append(s)
                models.append(s)
                index[(name, seed, n)] = s
            d = out / name / f"seed{seed}" / "diagnose"
            scenes = scene_options(cfg, hw, grid.scene_seed)
            diags.append(
                diagnose_stage(
                    f"{name}: seed {seed}, diagnose",
                    d,
                    out,
                    models,
                    scenes,
                    grid.diagnose_limit,
                    ["--examples", "2"],
                    report=False,
                )  # fmt: skip
            )
    return trains, diags, index


def run_lab(grid: Grid, out: Path, jobs: int = 1, threads: int | None = None, log=print) -> list[dict[str, Any]]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if jobs > 1 and threads is None:
        threads = 1  # side-by-side trainings each on one thread: no oversubscription
    trains, diags, index = lab_stages(grid, out, threads)
    total = len(trains) + len(diags)
    from vitreg.cli import main as runner

    run_side_by_side(list(enumerate(trains, 1)), total, jobs, runner, log=log)
    for i, s in enumerate(diags, len(trains) + 1):
        run_stage(s, i, total, runner, log=log)
    rows = lab_rows(grid, out, index)
    (out / "lab.json").write_text(json.dumps({"grid": grid.__dict__, "rows": rows}, indent=2))
    (out / "lab.md").write_text(lab_markdown(grid, rows))
    return rows


def lab_rows(grid: Grid, out: Path, index: dict) -> list[dict[str, Any]]:
    rows = []
    for name, point in grid.points.items():
        for seed in grid.seeds:
            metrics = json.loads((out / name / f"seed{seed}" / "diagnose" / "metrics.json").read_text())
            for n, m in zip(grid.registers, metrics["models"], strict=True):
                stage = index[(name, seed, n)]
                d = diagnose_summary(m)
                t = training_summary(stage.directory)
                stamp = _read_json(stage.directory / STAMP) or {}
                artifacts = meets_norm_bar(d)
                rows.append(
                    {"point": name, "overrides": " ".join(_overrides(point)), "seed": seed, "registers": n,
                     "top1": t["top1"], "minutes": (stamp.get("seconds") or 0) / 60, "artifacts": artifacts,
                     **{k: d[k] for k in ("outlier_ratio", "norm_ratio", "bimodal", "ashman_d", "first_outlier_layer",
                                          "sim_outlier", "sim_normal", "background_outliers", "background_patches")}}
                )  # fmt: skip
    return rows


def _f(v: Any, spec: str = ".3g") -> str:
    return "–" if v is None else "yes" if v is True else "no" if v is False else format(v, spec)


def _code(text: str) -> str:
    return f"`{text}`" if text else "(none: the base config as is)"


def lab_markdown(grid: Grid, rows: list[dict[str, Any]]) -> str:
    head = ["point", "seed", "reg", "top-1", "outliers", "norm ratio", "bimodal", "Ashman D", "first layer",
            "nbr sim out / normal", "on background out / all", "norm bar met", "train min"]  # fmt: skip
    lines = [
        f"Base config `{grid.base}`; diagnosed on {grid.diagnose_limit} held-out generated scenes "
        f"(generator seed {grid.scene_seed}). Bar for artifacts: auto rule bimodal, >= {100 * MIN_OUTLIER_RATIO:g}% "
        f"of patch tokens, >= {MIN_NORM_RATIO:g}x norm ratio. "
        "First layer: the first block (0-based) whose own tokens the auto rule splits, even when the output has none.",
        "",
        "| point | overrides |",
        "|---|---|",
        *[f"| {name} | {_code(' '.join(_overrides(p)))} |" for name, p in grid.points.items()],
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [
            r["point"], str(r["seed"]), str(r["registers"]), _f(r["top1"]), f"{100 * r['outlier_ratio']:.2f}%",
            _f(r["norm_ratio"]), _f(r["bimodal"]), _f(r["ashman_d"]), _f(r["first_outlier_layer"], "d"),
            f"{_f(r['sim_outlier'])} / {_f(r['sim_normal'])}",
            f"{_f(r['background_outliers'])} / {_f(r['background_patches'])}", _f(r["artifacts"]),
            f"{r['minutes']:.1f}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
