"""lab.md: the grid's points and one row per trained model, as in docs/artifact-lab.md."""

from __future__ import annotations

from typing import Any

from vitreg.analysis.artifact_bar import MIN_NORM_RATIO, MIN_OUTLIER_RATIO
from vitreg.lab.grid import Grid, overrides
from vitreg.results.lab import LabRow

HEADER = [
    "point",
    "seed",
    "reg",
    "top-1",
    "outliers",
    "norm ratio",
    "bimodal",
    "Ashman D",
    "first layer",
    "nbr sim out / normal",
    "on background out / all",
    "norm bar met",
    "sink heads (block)",
    "sink mass",
    "sinks on bg",
    "[CLS] share",
    "register sim",
    "train min",
]


def _f(v: Any, spec: str = ".3g") -> str:
    return "–" if v is None else "yes" if v is True else "no" if v is False else format(v, spec)


def _code(text: str) -> str:
    return f"`{text}`" if text else "(none: the base config as is)"


def _cells(r: LabRow) -> list[str]:
    return [
        r.point,
        str(r.seed),
        str(r.registers),
        _f(r.top1),
        f"{100 * r.outlier_ratio:.2f}%",
        _f(r.norm_ratio),
        _f(r.bimodal),
        _f(r.ashman_d),
        _f(r.first_outlier_layer, "d"),
        f"{_f(r.sim_outlier)} / {_f(r.sim_normal)}",
        f"{_f(r.background_outliers)} / {_f(r.background_patches)}",
        _f(r.artifacts),
        "–" if r.sink_heads is None else f"{100 * r.sink_heads:.0f}% ({r.sink_layer})",
        _f(r.sink_top_mass),
        _f(r.sinks_on_background),
        _f(r.cls_share_last),
        _f(r.register_similarity, ".3f"),
        f"{r.minutes:.1f}",
    ]


def lab_markdown(grid: Grid, rows: list[LabRow]) -> str:
    lines = [
        f"Base config `{grid.base}`; diagnosed on {grid.diagnose_limit} held-out generated scenes "
        f"(generator seed {grid.scene_seed}). Bar for artifacts: auto rule bimodal, >= {100 * MIN_OUTLIER_RATIO:g}% "
        f"of patch tokens, >= {MIN_NORM_RATIO:g}x norm ratio. "
        "First layer: the first block (0-based) whose own tokens the auto rule splits, even when the output has none. "
        "Sinks: per block and head, the largest share of the patch queries' attention one token receives; a head has "
        "a sink above 30%. Columns: the block with most sink heads (their share), their mean top mass, the share of "
        "those sinks on a background patch, and the last block's attention share on [CLS]. Register sim: the mean "
        "pairwise cosine similarity of the registers' output tokens (1.000: the registers stayed identical).",
        "",
        "| point | overrides |",
        "|---|---|",
        *[f"| {name} | {_code(' '.join(overrides(p)))} |" for name, p in grid.points.items()],
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
        *["| " + " | ".join(_cells(r)) + " |" for r in rows],
    ]
    return "\n".join(lines) + "\n"
