"""Linear probes on frozen output features (after the final norm), evaluated on held-out images.

* classification: top-1 of a linear classifier on [CLS], and on [CLS] concatenated with the mean patch token
  (mean patch alone for models without [CLS]);
* segmentation: a linear classifier on each patch token predicting the majority class of the patch's pixels; its
  logits are upsampled bilinearly to pixels and scored with the mIoU over the classes present in the held-out masks;
* depth: a linear regressor on each patch token predicting the patch's mean depth; predictions are upsampled
  bilinearly to pixels and scored with the RMSE against the held-out depth maps.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vitreg.errors import DataError
from vitreg.eval.features import Features, split_images
from vitreg.eval.fit import fit_probe, predict
from vitreg.results.probe import DepthProbe, LinearProbe, SegmentationProbe


def classification_probe(
    feats: Features, *, test_fraction: float = 0.5, seed: int = 0, epochs: int = 100
) -> LinearProbe:
    """Top-1 on held-out images of linear classifiers on [CLS] and on [CLS] + mean patch."""
    if feats.labels is None:
        raise DataError("the classification probe needs image labels (synthetic scenes or class subfolders)")
    labels = feats.labels
    num_classes = int(labels.max()) + 1
    train, test = split_images(feats.num_images, test_fraction, seed)
    mean_patch = feats.normed.mean((1, 2))  # (M, C)
    inputs = {"mean_patch": mean_patch}
    if feats.cls is not None:
        inputs = {"cls": feats.cls, "cls+mean_patch": np.concatenate([feats.cls, mean_patch], 1)}
    results = {}
    for name, x in inputs.items():
        probe, std = fit_probe(
            x[train], labels[train], task="classify", num_classes=num_classes, epochs=epochs, seed=seed
        )
        results[name] = float((predict(probe, std, x[test]).argmax(-1) == labels[test]).mean())
    return LinearProbe(
        train_images=len(train),
        test_images=len(test),
        num_classes=num_classes,
        chance_accuracy=float(np.bincount(labels[test]).max() / len(test)),
        top1=results,
    )


def _patch_pool(dense: np.ndarray, grid: tuple[int, int], patch: tuple[int, int]) -> np.ndarray:
    """(M, H, W) -> (M, h, w, ph * pw): the pixels under each patch (H, W cropped to whole patches)."""
    m = dense.shape[0]
    (h, w), (ph, pw) = grid, patch
    x = dense[:, : h * ph, : w * pw].reshape(m, h, ph, w, pw)
    return x.transpose(0, 1, 3, 2, 4).reshape(m, h, w, ph * pw)


def _upsample(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(M, h, w, D) patch predictions -> (M, H, W, D) by bilinear interpolation (align_corners=False)."""
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()


def segmentation_probe(
    feats: Features, *, test_fraction: float = 0.5, seed: int = 0, epochs: int = 60
) -> SegmentationProbe:
    """Linear semantic segmentation from patch tokens, mIoU at pixel resolution on held-out images."""
    if feats.masks is None:
        raise DataError("the segmentation probe needs masks (synthetic scenes provide them)")
    m, h, w, c = feats.normed.shape
    masks = feats.masks.astype(np.int64)  # (M, H, W)
    num_classes = int(masks.max()) + 1
    pooled = _patch_pool(masks, (h, w), feats.patch_size)  # (M, h, w, ph*pw)
    counts = np.stack([(pooled == k).sum(-1) for k in range(num_classes)], -1)  # (M, h, w, K)
    target = counts.argmax(-1)  # (M, h, w) majority class per patch
    train, test = split_images(m, test_fraction, seed)
    probe, std = fit_probe(
        feats.normed[train].reshape(-1, c),
        target[train].reshape(-1),
        task="classify",
        num_classes=num_classes,
        epochs=epochs,
        seed=seed,
    )
    logits = predict(probe, std, feats.normed[test].reshape(-1, c)).reshape(len(test), h, w, num_classes)
    gt = masks[test][:, : h * feats.patch_size[0], : w * feats.patch_size[1]]  # (T, H', W')
    pred = _upsample(logits, gt.shape[1:]).argmax(-1)  # (T, H', W')
    ious = {}
    for k in np.unique(gt):
        inter = np.logical_and(pred == k, gt == k).sum()
        union = np.logical_or(pred == k, gt == k).sum()
        ious[int(k)] = float(inter / union)
    return SegmentationProbe(
        train_images=len(train),
        test_images=len(test),
        num_classes=num_classes,
        classes_present=len(ious),
        miou=float(np.mean(list(ious.values()))),
        iou_per_class={str(k): v for k, v in ious.items()},
        pixel_accuracy=float((pred == gt).mean()),
        patch_accuracy=float((logits.argmax(-1) == target[test]).mean()),
    )


def depth_probe(feats: Features, *, test_fraction: float = 0.5, seed: int = 0, epochs: int = 60) -> DepthProbe:
    """Linear depth regression from patch tokens, RMSE at pixel resolution on held-out images."""
    if feats.depth is None:
        raise DataError("the depth probe needs depth maps (synthetic scenes provide them)")
    m, h, w, c = feats.normed.shape
    depth = feats.depth.astype(np.float32)  # (M, H, W)
    target = _patch_pool(depth, (h, w), feats.patch_size).mean(-1)  # (M, h, w)
    train, test = split_images(m, test_fraction, seed)
    probe, std = fit_probe(
        feats.normed[train].reshape(-1, c), target[train].reshape(-1, 1), task="regress", epochs=epochs, seed=seed
    )
    pred = predict(probe, std, feats.normed[test].reshape(-1, c)).reshape(len(test), h, w, 1)
    gt = depth[test][:, : h * feats.patch_size[0], : w * feats.patch_size[1]]
    up = _upsample(pred, gt.shape[1:])[..., 0]
    # Baseline: predicting the training set's mean depth everywhere.
    baseline = float(np.sqrt(((gt - target[train].mean()) ** 2).mean()))
    return DepthProbe(
        train_images=len(train),
        test_images=len(test),
        rmse=float(np.sqrt(((up - gt) ** 2).mean())),
        rmse_mean_baseline=baseline,
    )
