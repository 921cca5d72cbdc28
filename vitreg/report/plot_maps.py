"""Per-image pictures and register maps drawn from saved arrays: input with outlier patches outlined, norm map
(Fig. 16), first principal component over [-3σ, +3σ] (Fig. 15), last-layer attention of [CLS] and each register
upsampled to image size (Fig. 1, 9); mean attention per query (positional focus) and register similarity
(specialisation), from the reproducibility study."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from scipy.ndimage import zoom

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
    att = m.arrays["ex_attention"][:k] if m.has("ex_attention") else None  # (K, Q, gh, gw)
    names = m.query_names[: att.shape[1]] if att is not None else []
    # σ over every shown map: the component is whitened, so this is ~1, and one scale makes rows comparable
    sigma = float(np.std(pca)) if pca is not None and np.std(pca) > 0 else 1.0
    cols = ["input + outliers"] + (["mask"] if mask is not None else []) + ["norm map"]
    cols += (["PCA 1 (±3σ)"] if pca is not None else []) + [f"attn {q}" for q in names]
    fig = Figure(figsize=(PANEL * len(cols), PANEL * k + 0.4), dpi=100, layout="constrained")
    axes = fig.subplots(k, len(cols), squeeze=False)
    h, w = images.shape[1:3]
    gh, gw = norm.shape[1:]
    ph, pw = h / gh, w / gw
    for r in range(k):
        row = iter(axes[r])
        ax = next(row)
        ax.imshow(images[r])
        for i, j in zip(*np.nonzero(outlier[r]), strict=True):
            ax.add_patch(Rectangle((j * pw - 0.5, i * ph - 0.5), pw, ph, fill=False, ec="#ff1744", lw=1.2))
        if mask is not None:
            next(row).imshow(mask[r], cmap="tab20", interpolation="nearest")
        next(row).imshow(norm[r], cmap="viridis", interpolation="nearest")
        if pca is not None:
            next(row).imshow(pca[r], cmap="RdBu_r", vmin=-3 * sigma, vmax=3 * sigma, interpolation="nearest")
        for q in range(len(names)):
            next(row).imshow(_upsample(att[r, q], (h, w)), cmap="inferno")
        for ax in axes[r]:
            _off(ax)
    for ax, title in zip(axes[0], cols, strict=True):
        ax.set_title(title, fontsize=7)
    fig.suptitle(f"{m.label}: {int(outlier.sum())} outlier patches outlined in {k} images", fontsize=9)
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
    # at least 3.6 in wide so the title (model label) fits above a lone [CLS] map
    fig = Figure(figsize=(max(3.6, 1.7 * ncols + (1.6 if has_sim else 0)), 2.2), dpi=100, layout="constrained")
    widths = [1.0] * len(names) + ([1.9] if has_sim else [])
    axes = fig.subplots(1, ncols, squeeze=False, width_ratios=widths)[0]
    for ax, name, a in zip(axes, names, mean_att, strict=False):
        ax.imshow(a, cmap="inferno", interpolation="nearest")
        ax.set_title(f"mean attn {name}", fontsize=7)
        _off(ax)
    if has_sim:
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
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"{m.label}: positional focus", fontsize=8)
    return fig
