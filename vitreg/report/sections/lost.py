"""LOST section: CorLoc per Gram-matrix bias and example discoveries, from lost.json and figures/lost_examples.npz."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from vitreg.errors import RunDirError
from vitreg.report.sections import Section, figure, note, paragraph, save_figure, stale, table
from vitreg.report.templating import join
from vitreg.results.lost import LostResult
from vitreg.results.rundir import LOST_EXAMPLES, has_result, read_npz, read_result


def draw(run_dir: Path) -> Path | None:
    """figures/lost_examples.png: per example the image with the predicted (red) and ground-truth (green) boxes, the
    seed (star), and the patch degree map (low degree = seed candidates)."""
    src = Path(run_dir) / LOST_EXAMPLES
    if not src.is_file():
        return None
    z = read_npz(src)
    n = int(z["count"])
    mean, std = z["mean"], z["std"]
    try:
        items = [{k: z[f"{k}_{i}"] for k in ("image", "mask", "degree", "box", "gt", "seed")} for i in range(n)]
    except KeyError as err:
        raise RunDirError(f"{src} lacks {err.args[0]} (it lists {n} examples)") from None
    if not n:
        return None
    fig = Figure(figsize=(1.7 * n + 0.3, 3.6), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    for i, it in enumerate(items):
        img = np.clip(it["image"].transpose(1, 2, 0) * std + mean, 0, 1)  # (H, W, 3)
        h, w = img.shape[:2]
        ax = axes[0, i]
        ax.imshow(img)
        # boxes are [x0, y0, x1, y1) in pixels; imshow puts pixel i's centre at i, so its edges are at i +- 0.5
        for b in it["gt"].reshape(-1, 4):
            ax.add_patch(Rectangle((b[0] - 0.5, b[1] - 0.5), b[2] - b[0], b[3] - b[1], fill=False, ec="lime", lw=1))
        b = it["box"]
        ax.add_patch(Rectangle((b[0] - 0.5, b[1] - 0.5), b[2] - b[0], b[3] - b[1], fill=False, ec="red", lw=1.5))
        ph = h / it["degree"].shape[0]
        pw = w / it["degree"].shape[1]
        ax.plot((it["seed"][1] + 0.5) * pw - 0.5, (it["seed"][0] + 0.5) * ph - 0.5, "y*", ms=8, mec="k", mew=0.5)
        ax.set_xlim(-0.5, w - 0.5)  # a box on the border would otherwise widen the axes past the image
        ax.set_ylim(h - 0.5, -0.5)
        axes[1, i].imshow(it["degree"], cmap="viridis")
        axes[1, i].contour(it["mask"].astype(float), levels=[0.5], colors="red", linewidths=0.8)
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("boxes and seed", fontsize=8)
    axes[1, 0].set_ylabel("degree and mask", fontsize=8)
    return save_figure(fig, Path(run_dir) / "figures" / "lost_examples.png")


def render(run_dir: Path) -> list[Section]:
    if not has_result(run_dir, LostResult):
        return []
    data = read_result(run_dir, LostResult)
    s = data.settings
    rows = [
        {
            "bias": r.bias,
            "CorLoc": None if r.corloc is None else 100 * r.corloc,
            "correct": r.correct,
            "images": r.images,
            "mean best IoU": r.mean_best_iou,
            "seed outside mask": r.seed_outside_mask,
        }
        for r in data.results
    ]
    intro = paragraph(
        f"{data.model} ({data.registers} registers), {data.images} images of {data.dataset}, {data.protocol}; "
        f"features: {s.features} of block {s.layer}, k = {s.k}, {'L2-normalised' if s.normalize else 'not normalised'}"
        f"; {len(data.bad_images)} images skipped as bad. CorLoc (%) = images whose box has IoU ≥ 0.5 with a "
        "ground-truth box."
    )
    parts = [
        intro,
        *(note(n) for n in data.notes),
        table(rows, caption="LOST CorLoc per bias added to the Gram matrix"),
    ]
    fig_path = Path(run_dir) / "figures" / "lost_examples.png"
    npz = Path(run_dir) / LOST_EXAMPLES
    if npz.is_file() and stale(fig_path, npz):
        draw(run_dir)
    if fig_path.is_file():
        caption = (
            "Top: predicted box (red), ground-truth boxes (green), seed (star); bottom: patch degree (positive "
            f"correlations) and the expanded mask (red contour), bias {data.results[0].bias:g}."
        )
        parts.append(figure(fig_path, "LOST examples", caption))
    return [Section("lost", "Object discovery (LOST)", join(parts), order=200)]
