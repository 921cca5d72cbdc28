"""Test-time registers section (`vitreg fix`): the outcome, the outlier share as top-k grows, the outliers per block
before and after, [CLS] / register attention before and after, and the neuron table. From fix.json, neurons.json
and the diagnosis arrays of the original (a) and fixed (b) model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullLocator

from vitreg.report.sections import Section, bold, figure, img_tag, note, paragraph, save_figure, stale, table
from vitreg.report.templating import join
from vitreg.results.fix import FixResult, NeuronsFile
from vitreg.results.rundir import arrays_path, has_result, read_arrays, read_json, read_result

NEURON_ROWS = 32  # rows of the neuron table (the moved ones first, then the next candidates)


def _sweep_figure(result: FixResult, path: Path) -> Path | None:
    sweep = result.sweep
    if sweep is None:
        return None
    fig = Figure(figsize=(6.4, 3.2), layout="constrained")
    ax = fig.subplots()
    ks = [p.k for p in sweep.points]
    xs = [k + 0.5 for k in ks]  # log axis: k = 0 sits at 0.5
    ax.plot(xs, [100 * p.outlier_share for p in sweep.points], "o-", color="C3", label="outlier share (%)")
    ax.axhline(100 * sweep.before.outlier_share, color="C3", ls=":", lw=1, label="original")
    ax.axvline(sweep.chosen + 0.5, color="k", ls="--", lw=1, label=f"chosen k = {sweep.chosen}")
    ax.set_xscale("log")
    # the k values are the only ticks: the log scale's own minor ticks would label 0.6, 0.7, ... (k - 0.5)
    ax.set_xticks(xs, [str(k) for k in ks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("register neurons moved (k)")
    ax.set_ylabel("patch tokens above\nthe threshold (%)", color="C3")
    ax.set_ylim(bottom=0)
    handles, labels = ax.get_legend_handles_labels()
    cos = [p.cls_cosine for p in sweep.points]
    if all(c is not None for c in cos):
        ax2 = ax.twinx()
        ax2.plot(xs, [float(c) for c in cos if c is not None], "s-", color="C0", ms=3, label="[CLS] cosine")
        ax2.set_ylabel("final [CLS] cosine\nto the original", color="C0")
        more = ax2.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, loc="upper right", fontsize=8)  # one legend for both axes' lines
    return save_figure(fig, path)


def _layers_figure(result: FixResult, path: Path) -> Path | None:
    if not result.layers:
        return None
    fig = Figure(figsize=(6.4, 3.0), layout="constrained")
    ax = fig.subplots()
    layers = [r.layer for r in result.layers]
    ax.plot(layers, [100 * r.share_before for r in result.layers], "o-", color="C3", label="original")
    ax.plot(layers, [100 * r.share_after for r in result.layers], "o-", color="C2", label="test-time registers")
    ax.set_xlabel("block")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # blocks are whole numbers
    ax.set_ylabel("patch tokens above the\noriginal's threshold (%)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _attention_figure(run_dir: Path, path: Path, added: int) -> Path | None:
    """Mean last-block attention of [CLS] and of every register over the patch grid, before (top) and after (the
    last ``added`` registers of the fixed model are the test-time ones)."""
    return attention_figure(run_dir, path, [("a", "original", 0), ("b", "test-time\nregisters", added)], "test-time")


def attention_figure(run_dir: Path, path: Path, rows: list[tuple[str, str, int]], tag: str) -> Path | None:
    """:func:`attention_map_figure` saved as ``path`` (None: nothing to draw)."""
    fig = attention_map_figure(run_dir, rows, tag)
    return None if fig is None else save_figure(fig, path)


def attention_map_figure(run_dir: Path, rows: list[tuple[str, str, int]], tag: str) -> Figure | None:
    """Mean last-block attention of [CLS] and of every register over the patch grid, one row per model of the
    diagnose run ``run_dir``: ``rows`` are (key, title, added), the last ``added`` registers named with ``tag``."""
    maps_rows = []
    for key, title, added in rows:
        r = read_arrays(run_dir, key)
        names = [str(q) for q in r["query_names"]]
        names = [*names[: len(names) - added], *(f"{q} ({tag})" for q in names[len(names) - added :])]
        maps_rows.append((r["mean_attention"], names, title))
    cols = max(len(names) for _, names, _ in maps_rows)
    if cols == 0:
        return None
    # at least 2 columns wide: the row names sit left of the first map
    fig = Figure(figsize=(1.8 * max(cols, 2) + 0.3, 1.95 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for i, (maps, names, title) in enumerate(maps_rows):
        for j in range(cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(names):
                ax.imshow(np.asarray(maps[j]), cmap="inferno")
                ax.set_title(names[j], fontsize=7)
            else:
                ax.axis("off")
        axes[i, 0].set_ylabel(title, fontsize=8)
    fig.suptitle("mean last-block attention (each map on its own scale)", fontsize=8)
    return fig


def _neuron_rows(neurons: NeuronsFile) -> list[dict]:
    rows = []
    for rank, n in enumerate(neurons.search.neurons[: max(NEURON_ROWS, neurons.top_k)], 1):
        rows.append(
            {
                "rank": rank,
                "block": n.layer,
                "unit": n.index,
                "score": n.score,
                "selectivity": n.selectivity,
                "sparsity": n.sparsity,
                "moved": rank <= neurons.top_k,
            }
        )
    return rows


def _figures(run_dir: Path, result: FixResult) -> dict[str, Path]:
    figs = Path(run_dir) / "figures"
    src = Path(run_dir) / "fix.json"
    out = {}
    for name, draw in (("fix_sweep", _sweep_figure), ("fix_layers", _layers_figure)):
        p = figs / f"{name}.png"
        if stale(p, src):
            draw(result, p)
        if p.is_file():
            out[name] = p
    p = figs / "fix_attention.png"
    if result.top_k and arrays_path(run_dir, "b").is_file():
        if stale(p, arrays_path(run_dir, "b")):
            _attention_figure(run_dir, p, result.registers)
        if p.is_file():
            out["fix_attention"] = p
    return out


def render(run_dir: Path) -> list[Section]:
    if not has_result(run_dir, FixResult):
        return []
    from vitreg.results.codec import from_json

    result = read_result(run_dir, FixResult)
    neurons_path = Path(run_dir) / "neurons.json"
    neurons = from_json(NeuronsFile, read_json(neurons_path), neurons_path)
    s = neurons.search
    figs = _figures(run_dir, result)
    thr = "none" if s.threshold is None else f"{s.threshold:.4g}"
    parts = [
        bold(result.outcome),
        paragraph(
            f"{result.model}: outliers are block {s.detect_layer}'s patch tokens above {thr} ({s.rule} rule, "
            f"{s.images} images, {s.images_with_outliers} with outliers); units were scored in blocks "
            f"0..{s.top_layer if s.top_layer is not None else '–'} (where the outliers first appear). The test-time "
            "registers are the last registers of the fixed model (b); neurons.json holds the ranked units."
        ),
    ]
    parts += [note(n) for n in result.notes]
    h = result.held_out
    if h is not None and h.after is not None:
        cos = "n/a" if h.after.cls_cosine is None else f"{h.after.cls_cosine:.3f}"
        parts.append(
            paragraph(
                f"Held out ({h.images} images of {h.source}, not used to find the neurons): outliers "
                f"{100 * h.before.outlier_share:.2f}% -> {100 * h.after.outlier_share:.2f}% of block "
                f"{s.detect_layer}'s patch tokens (the fit's threshold), final [CLS] cosine to the original {cos}."
            )
        )
    if "fix_sweep" in figs:
        caption = (
            "Outlier share at the detection block with the first k neurons moved (k = 0: the extra token alone), "
            "measured against the original model's threshold, and the cosine of the final [CLS] to the original's."
        )
        parts.append(figure(figs["fix_sweep"], "outlier share as top-k grows", caption))
    if "fix_layers" in figs:
        parts.append(img_tag(figs["fix_layers"], "outliers per block before and after"))
        layer_rows = [
            {"block": r.layer, "threshold (original)": r.threshold, "before %": 100 * r.share_before,
             "after %": 100 * r.share_after, "auto threshold after": r.threshold_after}
            for r in result.layers
        ]  # fmt: skip
        parts.append(table(layer_rows, caption="Patch tokens above the original model's auto threshold, per block"))
    if "fix_attention" in figs:
        caption = (
            "Mean last-block attention of [CLS] and of each register over the images: the original (top) and with "
            "test-time registers (bottom)."
        )
        parts.append(figure(figs["fix_attention"], "attention before and after", caption))
    if result.sweep is not None:
        cols = ["k", "outlier_share", "max_patch_norm", "register_norm", "cls_cosine", "top1", "agreement"]
        sweep_rows = [{c: getattr(p, c) for c in cols} for p in [result.sweep.before, *result.sweep.points]]
        sweep_rows[0]["k"] = "original"
        parts.append(table(sweep_rows, cols, caption="The top-k sweep"))
    if s.neurons:
        parts.append(table(_neuron_rows(neurons), caption="Register neurons, ranked by score"))
    return [Section("fix", "Test-time registers", join(parts), order=5)]
