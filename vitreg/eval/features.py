"""Frozen features of a model over a data loader, gathered once and shared by every probe.

What is kept per image (h, w = patch grid, C = width, P = 3 * patch_h * patch_w):

* ``prenorm`` (M, h, w, C): the last block's patch tokens *before* the final norm: their norms define outliers
  (the paper's norms); ``norms`` (M, h, w) are those norms;
* ``normed`` (M, h, w, C) and ``cls`` (M, C) (None without [CLS]): the tokens after the final norm, the model's
  output features that downstream linear probes use; ``cls_prenorm`` (M, C) is [CLS] before the final norm;
* ``pixels`` (M, h, w, P): each patch's input pixels (normalised like the model input), for pixel reconstruction;
* ``labels`` (M,), ``masks`` (M, H, W), ``depth`` (M, H, W) when the dataset provides them (else None).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from vitreg.errors import DataError
from vitreg.models import Inspector
from vitreg.models.presets import patch_size_of


@dataclass
class Features:
    prenorm: np.ndarray  # float32 (M, h, w, C) last block output, before the final norm
    normed: np.ndarray  # float32 (M, h, w, C) after the final norm
    cls: np.ndarray | None  # float32 (M, C) after the final norm
    cls_prenorm: np.ndarray | None  # float32 (M, C) last block output, before the final norm
    norms: np.ndarray  # float32 (M, h, w) norms of ``prenorm``
    pixels: np.ndarray  # float32 (M, h, w, P) input patch pixels
    labels: np.ndarray | None  # int64 (M,)
    masks: np.ndarray | None  # int64 (M, H, W), 0 = background
    depth: np.ndarray | None  # float32 (M, H, W)
    patch_size: tuple[int, int]
    layer: int
    bad: list[tuple[str, str]]

    @property
    def num_images(self) -> int:
        return int(self.prenorm.shape[0])


def patchify(images: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """(B, 3, H, W) -> (B, h, w, 3 * ph * pw): each patch's pixels, channel-major like the patch embedding's weights."""
    b, c, hh, ww = images.shape
    ph, pw = patch
    h, w = hh // ph, ww // pw
    x = images[:, :, : h * ph, : w * pw].reshape(b, c, h, ph, w, pw)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, h, w, c * ph * pw)


def progress_bar(loader: Any, desc: str) -> Any:
    """A tqdm bar over the images of ``loader`` (on stderr), advanced by the caller per batch."""
    total = len(getattr(loader, "dataset", ())) or None
    return tqdm(total=total, unit="img", desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False)


def collect_features(
    model: torch.nn.Module,
    loader,
    *,
    layer: int = -1,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> Features:
    """Run ``model`` over ``loader`` (batches of same-size images) and gather :class:`Features`."""
    inspector = Inspector(model, dtype=dtype)
    layer = layer % inspector.depth
    patch = patch_size_of(model)
    keep: dict[str, list] = {
        k: [] for k in ("prenorm", "normed", "cls", "cls_prenorm", "pixels", "labels", "masks", "depth")
    }
    bad: list[tuple[str, str]] = []
    bar = progress_bar(loader, "features")
    for batch in loader:
        bad.extend(batch.get("bad", []))
        x = batch.get("image")
        bar.update(len(batch.get("bad", [])) + (len(x) if x is not None else 0))
        if x is None or (isinstance(x, list) and not x):
            continue
        if isinstance(x, list):
            raise ValueError("images of different sizes in one batch: probes need a fixed-size transform")
        cap = inspector.run(x.to(device), layers=[layer], attention_layers=None, normed=True)
        pre = cap.split_tokens(layer)
        post = cap.split_tokens("normed")
        keep["prenorm"].append(pre.patches.cpu().numpy())
        keep["normed"].append(post.patches.cpu().numpy())
        if post.cls is not None and pre.cls is not None:
            keep["cls"].append(post.cls.cpu().numpy())
            keep["cls_prenorm"].append(pre.cls.cpu().numpy())
        keep["pixels"].append(patchify(x, patch).numpy())
        for key, name in (("labels", "label"), ("masks", "mask"), ("depth", "depth")):
            v = batch.get(name)
            if isinstance(v, torch.Tensor):
                keep[key].append(v.numpy())
    if not keep["prenorm"]:
        raise DataError("no usable images: every image was bad or the source was empty")
    bar.close()
    m = sum(len(a) for a in keep["prenorm"])

    def cat(key: str) -> np.ndarray | None:
        parts = keep[key]
        # A field present for only some batches is unusable for a probe: treat it as absent.
        return np.concatenate(parts) if parts and sum(len(p) for p in parts) == m else None

    def floats(key: str) -> np.ndarray:  # a field every batch has (patch tokens and pixels)
        return np.concatenate(keep[key]).astype(np.float32)

    prenorm = floats("prenorm")
    return Features(
        prenorm=prenorm,
        normed=floats("normed"),
        cls=cat("cls"),
        cls_prenorm=cat("cls_prenorm"),
        norms=np.linalg.norm(prenorm, axis=-1),
        pixels=floats("pixels"),
        labels=cat("labels"),
        masks=cat("masks"),
        depth=cat("depth"),
        patch_size=patch,
        layer=layer,
        bad=bad,
    )


def split_images(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random train / held-out split of ``n`` image indices (both non-empty when n >= 2)."""
    if n < 2:
        raise DataError(f"need at least 2 images for a train/test split, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = min(max(1, round(n * test_fraction)), n - 1)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])
