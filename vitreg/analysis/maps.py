"""Per-image maps for the pictures: whitened first principal component of patch features (paper Fig. 15) and
which patches lie on background according to a segmentation mask."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def pca_first_component(patches: torch.Tensor | np.ndarray) -> np.ndarray:
    """First principal component of one image's patch features, standardised (zero mean, unit std).

    ``patches``: (H, W, C). PCA is fitted on this image's H*W patches. The sign is fixed so that the score with the
    largest magnitude is positive (PCA signs are arbitrary; this keeps pictures stable between runs).
    Returns (H, W) float32; a constant image gives zeros.
    """
    if isinstance(patches, torch.Tensor):
        patches = patches.detach().cpu().double().numpy()
    x = np.asarray(patches, np.float64)
    h, w, c = x.shape
    flat = x.reshape(h * w, c)
    flat = flat - flat.mean(0, keepdims=True)
    if h * w < 2 or float(np.abs(flat).max()) == 0.0:
        return np.zeros((h, w), np.float32)
    # numpy's LAPACK: small SVDs here are microseconds, torch's threaded one can stall on a busy CPU
    _, _, vh = np.linalg.svd(flat, full_matrices=False)  # vh (k, C): principal axes
    score = flat @ vh[0]  # (H*W,)
    sd = score.std()  # population std: the map has exactly unit variance
    score = score / sd if sd > 0 else score * 0
    if score[np.argmax(np.abs(score))] < 0:
        score = -score
    return score.reshape(h, w).astype(np.float32)


def patch_background(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) integer mask with 0 = background -> (B, gh, gw) bool: a patch is background when more than half of
    its pixels are. ``H, W`` must be multiples of the grid (true for diagnose, which resizes to the model input)."""
    if mask.ndim != 3:
        raise ValueError(f"expected a (B, H, W) mask, got {tuple(mask.shape)}")
    _, h, w = mask.shape
    if h % grid[0] or w % grid[1]:
        raise ValueError(f"mask of {h}x{w} pixels does not divide into a {grid[0]}x{grid[1]} patch grid")
    bg = (mask == 0).float().unsqueeze(1)  # (B, 1, H, W)
    share = F.avg_pool2d(bg, kernel_size=(h // grid[0], w // grid[1]))  # (B, 1, gh, gw)
    return share[:, 0] > 0.5
