"""Norm figures drawn from saved histograms and metrics: output-norm histogram (Fig. 3/7), norms along layers
(Fig. 4a), sweep summaries (Fig. 4b/4c), per-position outlier frequency (Fig. 10), neighbour similarity (Fig. 5a).

Every function takes a ``DiagnoseRun`` and returns a matplotlib ``Figure`` (Agg, no pyplot state), or None when the
run does not hold what the figure needs.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from vitreg.report.sections import title, wrap
from vitreg.results.rundir import DiagnoseRun, ModelRun

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _occupied(edges: np.ndarray, counts: np.ndarray) -> tuple[int, int]:
    """Index range [lo, hi) of bins holding tokens in any row of ``counts`` (..., E); whole range when empty."""
    nz = np.flatnonzero(counts.reshape(-1, counts.shape[-1]).sum(0))
    if not len(nz):
        return 0, len(edges) - 1
    return int(nz[0]), int(nz[-1]) + 1


def rebin(edges: np.ndarray, counts: np.ndarray, target: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Merge adjacent bins of the occupied range so about ``target`` remain (counts (..., E) -> (..., E')).

    The saved histogram is fine (hundreds of log bins) so that runs add up exactly; a few thousand tokens spread
    over it look like noise, so figures merge whole bins (sums of counts, nothing interpolated)."""
    lo, hi = _occupied(edges, counts)
    factor = max(1, math.ceil((hi - lo) / target))
    hi = min(lo + factor * math.ceil((hi - lo) / factor), counts.shape[-1])
    idx = np.arange(lo, hi, factor)
    merged = np.add.reduceat(counts[..., lo:hi], idx - lo, axis=-1)
    return np.append(edges[idx], edges[hi]), merged


def _xrange(models: list[ModelRun], log_x: bool) -> tuple[float, float]:
    """A common x range covering every model's output tokens, [CLS], registers and thresholds."""
    lo, hi = math.inf, 0.0
    for m in models:
        edges = m.arrays["hist_edges"]
        rows = [m.output_counts()]
        rows += [m.arrays[k].reshape(-1, len(edges) - 1) for k in ("cls_hist", "reg_hist") if k in m.arrays]
        a, b = _occupied(edges, np.concatenate([np.atleast_2d(r) for r in rows]))
        lo, hi = min(lo, edges[a]), max(hi, edges[b])
        if m.threshold is not None:
            lo, hi = min(lo, m.threshold), max(hi, m.threshold)
    if log_x:
        return lo / 1.5, hi * 1.5
    return 0.0, hi * 1.05


MARK_ROWS = 4  # rows of named register markers; more registers share one row


def _marks(m: ModelRun) -> list[tuple[str, list[float]]]:
    """[CLS] and register mean output norms from metrics.json, for markers on the histogram: one row per token, or
    one row for all registers when there are more than MARK_ROWS (their names would pile up)."""
    out = m.result.output
    marks: list[tuple[str, list[float]]] = []
    if out.cls_norm_mean is not None:
        marks.append(("[CLS]", [float(out.cls_norm_mean)]))
    regs = [(f"reg{i}", float(v)) for i, v in enumerate(out.register_norms_mean) if v is not None]
    if len(regs) > MARK_ROWS:
        marks.append((f"{len(regs)} registers", [v for _, v in regs]))
    else:
        marks += [(name, [v]) for name, v in regs]
    return marks


def _common_bins(models: list[ModelRun]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Output counts merged into the same display bins for every model (when they share saved edges), so shares per
    bin compare across models; otherwise each model is merged on its own."""
    edges = models[0].arrays["hist_edges"]
    if all(np.array_equal(m.arrays["hist_edges"], edges) for m in models):
        merged_edges, merged = rebin(edges, np.stack([m.output_counts() for m in models]).astype(np.float64))
        return [(merged_edges, c) for c in merged]
    return [rebin(m.arrays["hist_edges"], m.output_counts().astype(np.float64)) for m in models]


def norm_histogram(run: DiagnoseRun, log_x: bool) -> Figure:
    """Output patch-token norms. Log-x: share of tokens per (log-spaced) bin; linear x: share per unit norm, since
    the saved bins widen with the norm and raw counts would inflate the tail."""
    models = run.models
    side_by_side = len(models) <= 2
    ncols = len(models) if side_by_side else 1
    panel = 5.2
    fig = Figure(figsize=(panel * ncols, 3.4), dpi=100, layout="constrained")
    axes = fig.subplots(1, ncols, sharex=True, squeeze=False)[0]
    x0, x1 = _xrange(models, log_x)
    scale = np.log if log_x else (lambda v: v)
    binned = _common_bins(models)
    tops = np.zeros(len(axes))  # the highest bar of each axes
    for i, m in enumerate(models):
        ax = axes[i if side_by_side else 0]
        color = COLORS[i % len(COLORS)]
        edges, counts = binned[i]
        total = max(counts.sum(), 1.0)
        y = counts / total if log_x else counts / total / np.diff(edges)
        tops[i if side_by_side else 0] = max(tops[i if side_by_side else 0], y.max(initial=0.0))
        ax.stairs(y, edges, fill=side_by_side, alpha=0.6 if side_by_side else 1.0, color=color, label=m.label)
        if m.threshold is not None:
            ax.axvline(m.threshold, color=color if not side_by_side else "k", ls="--", lw=1)
            ax.annotate(
                f"threshold {m.threshold:.3g}",
                (m.threshold, 1.0),
                xycoords=("data", "axes fraction"),
                rotation=90,
                va="top",
                ha="right",
                fontsize=7,
            )
        # markers inside the axes (above them they ran into the title), one row each from the top down, in the
        # headroom left above the bars; names beside them, on the left near the right edge so they stay inside
        for j, (name, values) in enumerate(_marks(m)):
            y = 0.95 - 0.075 * (j % (MARK_ROWS + 1))
            ax.plot(values, [y] * len(values), "v", ms=5, transform=ax.get_xaxis_transform(), color=color, mec="k")
            right = (scale(max(values)) - scale(x0)) / (scale(x1) - scale(x0)) > 0.85
            ax.annotate(
                name, (max(values), y), xycoords=("data", "axes fraction"), xytext=(-5 if right else 5, 0),
                textcoords="offset points", fontsize=7, va="center", ha="right" if right else "left",
            )  # fmt: skip
        rule = m.result.rule.kind
        if side_by_side:
            ratio = m.result.output.outlier_ratio
            ratio_txt = "–" if ratio is None else f"{100 * ratio:.2f}%"
            ax.set_title(title(m.label, f"rule {rule}, outliers {ratio_txt}", panel - 1.2, 9), fontsize=9)
    any_tokens = any(m.output_counts().sum() > 0 for m in models)
    for ax, top in zip(axes, tops, strict=True):
        ax.set_xscale("log" if log_x else "linear")
        ax.set_yscale("log" if any_tokens else "linear")  # log y: the outlier tail is a few % of the tokens
        if any_tokens and top > 0:
            ax.set_ylim(top=top * 6)  # the top ~quarter of the axes stays free for the [CLS] / register markers
        ax.set_xlim(x0, x1)
        ax.set_xlabel("output patch-token norm (before final norm)")
        ax.set_ylabel("share of tokens per bin" if log_x else "share of tokens per unit norm")
    if not side_by_side:
        axes[0].legend(fontsize=7)
        axes[0].set_title("output patch-token norms (▼ = [CLS] / register norms)", fontsize=9)
    return fig


def layer_norms(run: DiagnoseRun) -> Figure:
    """Per-layer norm distribution as a heatmap (layer on x, norm on y), median / p98 lines, per-layer threshold,
    first outlier layer marked (Fig. 4a); below it, the outlier ratio per layer."""
    models = run.models
    ncols = min(len(models), 4)
    nrows = math.ceil(len(models) / ncols)
    # a panel holds the y label, the heatmap and its colour bar with label: under ~4.5 in the heatmap gets thin
    panel = 4.8
    fig = Figure(figsize=(panel * ncols, 4.6 * nrows), dpi=100, layout="constrained")
    grid = fig.add_gridspec(2 * nrows, ncols, height_ratios=[3, 1] * nrows)
    for i, m in enumerate(models):
        r, c = divmod(i, ncols)
        ax = fig.add_subplot(grid[2 * r, c])
        ax2 = fig.add_subplot(grid[2 * r + 1, c], sharex=ax)
        # (E'+1,), (L, E') after merging bins
        edges, counts = rebin(m.arrays["hist_edges"], m.arrays["hist_counts"].astype(np.float64), target=80)
        depth = counts.shape[0]
        share = counts / np.maximum(counts.sum(1, keepdims=True), 1)  # (L, E') share of the layer's tokens
        share = np.where(share > 0, share, np.nan)
        vmin = np.nanmin(share) if np.isfinite(share).any() else 1e-6
        mesh = ax.pcolormesh(
            np.arange(depth + 1) - 0.5, edges, share.T, norm=LogNorm(vmin=vmin, vmax=1), cmap="magma_r"
        )
        layers = m.result.layers
        xs = [d.layer for d in layers]
        lines = {"median": [d.median for d in layers], "p98": [d.p98 for d in layers], "max": [d.max for d in layers]}
        for (name, ys), style in zip(lines.items(), ("-", "--", ":"), strict=True):
            if any(v is not None for v in ys):
                ax.plot(xs, [np.nan if v is None else v for v in ys], style, color="#1f77b4", lw=1.2, label=name)
        th = [(d.layer, d.threshold) for d in layers if d.threshold is not None]
        if th:
            ax.plot(*zip(*th, strict=True), "x", color="#2ca02c", ms=5, label="threshold")
        first = m.result.first_outlier_layer
        for a in (ax, ax2):
            if first is not None:
                a.axvline(first, color="#d62728", ls="--", lw=1)
        ax.set_yscale("log")
        top = max([edges[-1]] + [d.max for d in layers if d.max is not None])
        ax.set_ylim(edges[0], top * 1.15)
        ax.set_ylabel("patch-token norm")
        first_txt = "none" if first is None else str(first)
        ax.set_title(title(m.label, f"first outlier layer {first_txt}", panel - 1.2, 9), fontsize=9)
        ax.legend(fontsize=6, loc="best", framealpha=0.6)
        fig.colorbar(mesh, ax=ax, label="share of layer's tokens", shrink=0.8)
        pct = [0.0 if d.outlier_ratio is None else 100 * d.outlier_ratio for d in layers]
        ax2.bar(xs, pct, color="#d62728", width=0.7)
        ax2.set_ylabel("outliers %")
        ax2.set_xlabel("block")
        ax2.set_xlim(-0.5, depth - 0.5)
        # at least 0-1%: an empty panel otherwise gets an axis of 0-0.05% that suggests a measured tiny share
        ax2.set_ylim(0, max(1.0, 1.15 * max(pct, default=0.0)))
        if not any(pct):
            ax2.text(0.5, 0.5, "no outliers at any block", transform=ax2.transAxes, ha="center", color="0.4")
        ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def sweep(run: DiagnoseRun) -> Figure:
    """Outlier ratio and norm ratio per entry of a sweep (checkpoints along training: Fig. 4b; sizes: Fig. 4c)."""
    # the end of a long label tells entries apart (checkpoint paths share their start: runs/x/train/seed0/reg0, ...)
    labels = [m.label if len(m.label) <= 24 else f"{m.key}: …{m.label[-20:]}" for m in run.models]
    outs = [m.result.output for m in run.models]
    fig = Figure(figsize=(max(8.0, 1.2 * len(labels) + 3), 3.6), dpi=100, layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    x = np.arange(len(labels))
    for ax, values, name, scale in (
        (ax1, [o.outlier_ratio for o in outs], "outlier ratio (%)", 100.0),
        (ax2, [o.norm_ratio for o in outs], "norm ratio (outlier / normal)", 1.0),
    ):
        ys = [np.nan if v is None else scale * float(v) for v in values]
        ax.plot(x, ys, "o-", color="#d62728")
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(name)
        ax.set_ylim(bottom=0)  # both are >= 0; an empty or flat series otherwise gets a symmetric axis around 0
        ax.grid(alpha=0.3)
        if all(v is None for v in values):
            ax.text(0.5, 0.5, "no outliers in any entry", transform=ax.transAxes, ha="center", color="0.4")
    ax1.set_title("outliers per entry", fontsize=9)
    ax2.set_title("outlier / normal mean norm (gap: none)", fontsize=9)
    return fig


def positions(run: DiagnoseRun) -> Figure | None:
    """Share of tokens above the threshold at each grid position over the dataset (Fig. 10)."""
    models = [m for m in run.models if m.has("position_counts", "position_totals")]
    if not models:
        return None
    panel = 3.4
    fig = Figure(figsize=(panel * len(models), 3.0), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, m in zip(axes, models, strict=True):
        counts, totals = m.arrays["position_counts"].astype(np.float64), m.arrays["position_totals"]
        freq = np.divide(counts, totals, out=np.full(counts.shape, np.nan), where=totals > 0)  # (gh, gw)
        peak = np.nanmax(freq) if np.isfinite(freq).any() else 0.0
        # vmax at least 1%: a run without outliers then reads as a flat dark map on a 0-1% scale
        im = ax.imshow(100 * freq, cmap="viridis", vmin=0, vmax=max(100 * peak, 1.0))
        ax.set_title(title(m.label, f"max {100 * peak:.1f}%", panel - 0.6, 9), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, label="outlier share %", shrink=0.85)
    return fig


def neighbors(run: DiagnoseRun) -> Figure | None:
    """Densities of the cosine similarity of each input patch embedding to its 4 neighbours (Fig. 5a)."""
    models = [m for m in run.models if m.has("neighbor_edges", "neighbor_hist_outlier", "neighbor_hist_normal")]
    if not models:
        return None
    panel = 3.8
    fig = Figure(figsize=(panel * len(models), 3.0), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(models), squeeze=False, sharey=True)[0]
    for ax, m in zip(axes, models, strict=True):
        hists = np.stack([m.arrays["neighbor_hist_normal"], m.arrays["neighbor_hist_outlier"]]).astype(np.float64)
        edges, hists = rebin(m.arrays["neighbor_edges"], hists, target=40)  # (S'+1,), (2, S')
        width = np.diff(edges)
        for h, name, color in zip(hists, ("normal", "outlier"), ("#1f77b4", "#d62728"), strict=True):
            if h.sum() > 0:  # a density per unit similarity, so both curves have area 1 whatever their sizes
                ax.stairs(h / h.sum() / width, edges, color=color, lw=1.5, label=f"{name} ({int(h.sum())})")
            else:
                ax.plot([], [], color=color, label=f"{name} (none)")
        ax.set_xlabel("cosine similarity to 4 neighbours")
        ax.set_title(wrap(m.label, panel - 0.6, 9), fontsize=9)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("density")
    return fig
