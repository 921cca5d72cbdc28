"""Per-image pictures and register maps drawn from saved arrays: input with outlier patches outlined, norm map
(Fig. 16), first principal component over [-3σ, +3σ] (Fig. 15), last-layer attention of [CLS] and each register
upsampled to image size (Fig. 1, 9); mean attention per query (positional focus) and register similarity
(specialisation), from the reproducibility study."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from scipy.ndimage import zoom

from vitreg.report.sections import title
from vitreg.results.rundir import ModelRun

PANEL = 1.35  # inches per picture


def _upsample(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(gh, gw) -> (H, W) bilinear, so a patch map lines up with the input image."""
    gh, gw = a.shape
    return zoom(a.astype(np.float64), (hw[0] / gh, hw[1] / gw), order=1, mode="nearest")


def _off(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def examples(m: ModelRun) -> Figure | None:
    """One row per example: input with outliers outlined, [mask], norm map, PCA 1, [CLS] and register attention."""
    if not m.has("ex_images", "ex_norm"):
        return None
    # every kept example is drawn (diagnose keeps at most 16, so the page stays a few MB)
    images = m.arrays["ex_images"]  # (K, H, W, 3) uint8
    k = len(images)
    if k == 0:
        return None
    norm = m.arrays["ex_norm"][:k]  # (K, gh, gw)
    outlier = m.arrays["ex_outlier"][:k].astype(bool) if m.has("ex_outlier") else np.zeros(norm.shape, bool)
    mask = m.arrays["ex_mask"][:k] if m.has("ex_mask") else None  # (K, H, W)
    pca = m.arrays["ex_pca"][:k] if m.has("ex_pca") else None  # (K, gh, gw)
    # (K, Q, gh, gw); Q = 0 for a model with neither [CLS] nor registers, or a run without attention maps
    att = m.arrays["ex_attention"][:k] if m.has("ex_attention") else np.zeros((k, 0, 1, 1), np.float32)
    names = m.query_names[: att.shape[1]]
    # σ over every shown map: the component is whitened, so this is ~1, and one scale makes rows comparable
    sigma = float(np.std(pca)) if pca is not None and np.std(pca) > 0 else 1.0
    cols = ["input + outliers"] + (["mask"] if mask is not None else []) + ["norm map"]
    cols += (["PCA 1 (±3σ)"] if pca is not None else []) + [f"attn {q}" for q in names]
    width = PANEL * len(cols)
    fig = Figure(figsize=(width, PANEL * k + 0.9), dpi=100, layout="constrained")  # + title and colour bars
    axes = fig.subplots(k, len(cols), squeeze=False)
    h, w = images.shape[1:3]
    gh, gw = norm.shape[1:]
    ph, pw = h / gh, w / gw
    # one norm scale for every image, so a bright patch means the same norm in every row and the bar gives values
    norm_range = {"vmin": float(norm.min()), "vmax": float(norm.max())}
    bars: dict[int, tuple[Any, str, list[float] | None, list[str] | None]] = {}  # column -> the scale under it
    for r in range(k):
        row = iter(axes[r])
        ax = next(row)
        ax.imshow(images[r])
        for i, j in zip(*np.nonzero(outlier[r]), strict=True):
            ax.add_patch(Rectangle((j * pw - 0.5, i * ph - 0.5), pw, ph, fill=False, ec="#ff1744", lw=1.2))
        if mask is not None:
            next(row).imshow(mask[r], cmap="tab20", interpolation="nearest")
        im = next(row).imshow(norm[r], cmap="viridis", interpolation="nearest", **norm_range)
        bars[cols.index("norm map")] = (im, "patch-token norm", None, None)
        if pca is not None:
            im = next(row).imshow(pca[r], cmap="RdBu_r", vmin=-3 * sigma, vmax=3 * sigma, interpolation="nearest")
            ticks = [-3 * sigma, 0.0, 3 * sigma]
            bars[cols.index("PCA 1 (±3σ)")] = (im, "PCA 1", ticks, ["−3σ", "0", "+3σ"])
        for q in range(len(names)):
            next(row).imshow(_upsample(att[r, q], (h, w)), cmap="inferno")
        for ax in axes[r]:
            _off(ax)
    for ax, col in zip(axes[0], cols, strict=True):
        ax.set_title(col, fontsize=7)
    for c, (im, label, bar_ticks, tick_labels) in bars.items():
        # an inset under the column's last picture: the layout makes room for it, and fig.axes stays one grid of
        # pictures (one axes per picture)
        cax = axes[-1, c].inset_axes((0.05, -0.16, 0.9, 0.07))
        bar = fig.colorbar(im, cax=cax, orientation="horizontal")
        bar.set_label(label, fontsize=7)
        bar.ax.tick_params(labelsize=6)
        if bar_ticks is not None:
            bar.set_ticks(bar_ticks, labels=tick_labels)
    fig.suptitle(
        title(m.label, f"{int(outlier.sum())} outlier patches outlined in {k} images", width - 0.2, 9), fontsize=9
    )
    return fig


def registers(m: ModelRun) -> Figure | None:
    """Mean last-layer attention of [CLS] and each register over the dataset, and the register-similarity matrix."""
    if not m.has("mean_attention"):
        return None
    mean_att = m.arrays["mean_attention"]  # (Q, gh, gw)
    names = m.query_names[: len(mean_att)]
    sim = m.arrays.get("register_similarity")  # (R, R)
    has_sim = sim is not None and sim.ndim == 2 and sim.shape[0] > 1
    ncols = len(names) + (1 if has_sim else 0)
    if ncols == 0:  # a model with neither [CLS] nor registers has no prefix token whose attention to show
        return None
    # at least 3.6 in wide so a short title fits above a lone [CLS] map (a long one is wrapped); the similarity
    # panel is a square map plus its colour bar
    width = max(3.6, 1.7 * len(names) + (2.2 if has_sim else 0))
    fig = Figure(figsize=(width, 2.2), dpi=100, layout="constrained")
    widths = [1.0] * len(names) + ([1.3] if has_sim else [])
    axes = fig.subplots(1, ncols, squeeze=False, width_ratios=widths)[0]
    for ax, name, a in zip(axes, names, mean_att, strict=False):
        ax.imshow(a, cmap="inferno", interpolation="nearest")
        ax.set_title(f"mean attn {name}", fontsize=7)
        _off(ax)
    if has_sim and sim is not None:
        ax = axes[-1]
        im = ax.imshow(sim, cmap="viridis", vmin=min(0.0, float(sim.min())), vmax=1.0)
        r = sim.shape[0]
        if r <= 8:
            for i in range(r):
                for j in range(r):
                    color = "k" if sim[i, j] > 0.6 else "w"  # readable on viridis' bright and dark ends
                    ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=6, color=color)
        ax.set_xticks(range(r), [f"reg{i}" for i in range(r)], fontsize=6, rotation=90)
        ax.set_yticks(range(r), [f"reg{i}" for i in range(r)], fontsize=6)
        ax.set_title("register attention similarity", fontsize=7)
        fig.colorbar(im, ax=ax, shrink=0.8).ax.tick_params(labelsize=6)
    fig.suptitle(title(m.label, "positional focus", width - 0.2, 8), fontsize=8)
    return fig
