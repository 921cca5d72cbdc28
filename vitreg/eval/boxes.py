"""Box geometry for object discovery: IoU between xyxy boxes and CorLoc over images.

Boxes are float xyxy in continuous pixel-edge coordinates (right/bottom edges exclusive), the convention of
:mod:`vitreg.data.transforms`: a box covering pixel columns 0..9 is ``x1=0, x2=10``, so area = (x2 - x1) * (y2 - y1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CORLOC_IOU = 0.5  # an image counts as correctly localised when the predicted box has IoU >= 0.5 with any GT box


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes -> (N, M). Degenerate (zero-area) boxes have IoU 0."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])  # (N, M, 2)
    inter = np.clip(rb - lt, 0, None).prod(-1)  # (N, M)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)  # (N,)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)  # (M,)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def best_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Highest IoU between one predicted (4,) box and any of the (K, 4) ground-truth boxes (0 when K = 0)."""
    gt = np.asarray(gt, np.float64).reshape(-1, 4)
    if len(gt) == 0:
        return 0.0
    return float(box_iou(np.asarray(pred).reshape(1, 4), gt).max())


def corloc(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray], iou: float = CORLOC_IOU) -> dict:
    """CorLoc: the fraction of images whose predicted box has IoU >= ``iou`` with at least one ground-truth box.

    ``preds``: one (4,) box per image; ``gts``: one (K_i, 4) array per image. Images without any ground-truth box
    cannot be localised correctly or wrongly: they are left out of the fraction and counted in ``no_gt``.
    """
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predicted boxes for {len(gts)} images")
    ious, no_gt = [], 0
    for p, g in zip(preds, gts, strict=True):
        g = np.asarray(g).reshape(-1, 4)
        if len(g) == 0:
            no_gt += 1
            continue
        ious.append(best_iou(p, g))
    arr = np.asarray(ious, np.float64)
    hits = int((arr >= iou).sum())
    return dict(
        corloc=hits / len(arr) if len(arr) else None,
        correct=hits,
        images=len(arr),
        no_gt=no_gt,
        mean_best_iou=float(arr.mean()) if len(arr) else None,
        iou_threshold=iou,
    )
