"""Draw every diagnose figure of a run directory into DIR/figures/*.png, from the saved files only.

A manifest (DIR/figures/manifest.json) lists what was drawn, so the report sections can embed the figures without
redrawing them and know which histogram scale the user asked for.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from vitreg import atomic
from vitreg.report import plot_maps, plot_norms
from vitreg.report.sections import save_figure
from vitreg.results.rundir import DiagnoseRun, load_run

DPI = 100  # small figures: the page embeds them as data URIs and should stay a few MB at most
MANIFEST = "manifest.json"


def safe_key(key: str) -> str:
    """A model key usable in a file name (keys come from metrics.json)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key)[:64] or "_"


def choose_log_x(run: DiagnoseRun, log_x: bool | None) -> bool:
    """The user's choice, else the run's config, else log-x when the output norms span more than a decade above
    their median (high-norm tails then squeeze the normal tokens into a sliver on a linear axis)."""
    if log_x is not None:
        return bool(log_x)
    cfg = run.metrics.config
    if isinstance(cfg.get("log_x"), bool):
        return cfg["log_x"]
    for m in run.models:
        edges, counts = m.arrays["hist_edges"], m.output_counts()
        if counts.sum() == 0:
            continue
        cdf = np.cumsum(counts) / counts.sum()
        median = edges[1:][np.searchsorted(cdf, 0.5)]
        top = edges[1:][np.flatnonzero(counts)[-1]]
        if top > 10 * median:
            return True
    return False


def _save(fig: Figure | None, path: Path) -> Path | None:
    if fig is None:
        return None
    return save_figure(fig, path, DPI)


def draw_figures(run_dir: Path, log_x: bool | None = None) -> dict[str, Any]:
    """Draw the figures for a diagnose run; returns the manifest ``{"log_x", "figures": {name: file name}}``."""
    run = load_run(run_dir)
    out = Path(run_dir) / "figures"
    atomic.make_dirs(out)
    use_log = choose_log_x(run, log_x)
    figs: dict[str, Figure | None] = {
        "norm_hist": plot_norms.norm_histogram(run, log_x=False),
        "norm_hist_logx": plot_norms.norm_histogram(run, log_x=True),
        "layers": plot_norms.layer_norms(run),
        "sweep": plot_norms.sweep(run) if run.is_sweep else None,
        "positions": plot_norms.positions(run),
        "neighbors": plot_norms.neighbors(run),
    }
    for m in run.models:
        figs[f"examples_{safe_key(m.key)}"] = plot_maps.examples(m)
        figs[f"registers_{safe_key(m.key)}"] = plot_maps.registers(m)
    drawn = {}
    for name, fig in figs.items():
        if _save(fig, out / f"{name}.png") is not None:
            drawn[name] = f"{name}.png"
    manifest = {"log_x": use_log, "figures": drawn}
    atomic.write_json(out / MANIFEST, manifest)
    return manifest


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    """The manifest of the last drawing, or None when the figures were never drawn (or the manifest is unreadable)."""
    path = Path(run_dir) / "figures" / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    figs = manifest.get("figures") if isinstance(manifest, dict) else None
    if not isinstance(figs, dict) or not all((path.parent / f).is_file() for f in figs.values()):
        return None
    return manifest
