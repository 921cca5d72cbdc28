"""Training data as in-memory uint8 arrays: generated scenes, an image folder, or a CIFAR-style .npz.

Small images fit in memory (4096 scenes at 32 px = 12 MiB), so every batch is a gather from one uint8 tensor
(N, H, W, 3) followed by batched augmentation: no per-image Python work, no worker processes.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vitreg.data.images import is_image_file, load_image
from vitreg.data.scenes import SceneConfig
from vitreg.data.synthetic import render_arrays
from vitreg.errors import BadImageError, ConfigError, DataError
from vitreg.train.config import DataConfig

logger = logging.getLogger(__name__)


@dataclass
class ArrayData:
    train_images: torch.Tensor  # uint8 (N, H, W, 3)
    train_labels: torch.Tensor  # int64 (N,)
    eval_images: torch.Tensor  # uint8 (M, H, W, 3)
    eval_labels: torch.Tensor  # int64 (M,)
    num_classes: int
    description: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of unreadable files


def scene_config(dc: DataConfig, hw: tuple[int, int]) -> SceneConfig:
    """The scenes of ``dc`` at the model's input size ``hw``."""
    return dataclasses.replace(dc.scene, img_size=hw)


@functools.lru_cache(maxsize=8)
def _rendered(cfg: SceneConfig, n: int, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Cached per process: a registers sweep renders its scenes once.
    arrays = render_arrays(cfg, n, start=start)
    return torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["labels"])


def load_data(dc: DataConfig, hw: tuple[int, int], device: Any = "cpu") -> ArrayData:
    """Train and held-out arrays for ``dc`` at input size ``hw`` = (H, W). ``kind: device`` renders every batch on
    ``device`` when it is indexed (:mod:`vitreg.data.device_scenes`) instead of holding a uint8 cache."""
    if dc.kind == "device":
        from vitreg.data.device_scenes import DeviceScenes

        cfg = scene_config(dc, hw)
        train = DeviceScenes(cfg, dc.train_size, 0, device)
        held = DeviceScenes(cfg, dc.eval_size, dc.eval_start, device)
        desc = f"device scenes task={cfg.task} train 0..{dc.train_size - 1} held-out {dc.eval_start}..+{dc.eval_size}"
        return ArrayData(train, train.labels, held, held.labels, cfg.num_classes, desc)  # type: ignore[arg-type]
    if dc.kind == "synthetic":
        cfg = scene_config(dc, hw)
        tx, ty = _rendered(cfg, dc.train_size, 0)
        ex, ey = _rendered(cfg, dc.eval_size, dc.eval_start)
        desc = f"synthetic task={cfg.task} train 0..{dc.train_size - 1} held-out {dc.eval_start}..+{dc.eval_size}"
        return ArrayData(tx, ty, ex, ey, cfg.num_classes, desc)
    reader = _read_folder if dc.kind == "folder" else _read_npz
    images, labels, classes, skipped = reader(Path(dc.path), hw)
    if dc.eval_path:
        eimages, elabels, eclasses, eskipped = reader(Path(dc.eval_path), hw)
        if dc.kind == "folder" and eclasses != classes:
            raise ConfigError(f"data.eval_path classes {eclasses} differ from data.path classes {classes}")
        classes = max(classes, eclasses) if isinstance(classes, int) else classes
        skipped += eskipped
    else:
        # A fixed shuffle (data.seed) picks the held-out images, the same for every run of a sweep.
        order = np.random.default_rng(dc.seed).permutation(len(labels))
        n_eval = max(1, round(dc.eval_fraction * len(labels)))
        if len(labels) - n_eval < 1:
            raise ConfigError(f"{dc.path}: {len(labels)} images are too few to hold out {n_eval}")
        eidx, tidx = np.sort(order[:n_eval]), np.sort(order[n_eval:])
        images, eimages = images[tidx], images[eidx]
        labels, elabels = labels[tidx], labels[eidx]
    num_classes = len(classes) if isinstance(classes, list) else int(classes)
    desc = f"{dc.kind} {dc.path}: {len(labels)} train, {len(elabels)} held-out, {num_classes} classes"
    return ArrayData(
        torch.from_numpy(images), torch.from_numpy(labels), torch.from_numpy(eimages), torch.from_numpy(elabels),
        num_classes, desc, skipped,
    )  # fmt: skip


def _fit(im: Image.Image, hw: tuple[int, int]) -> np.ndarray:
    """Resize the shorter side to fit (H, W), then centre-crop: uint8 (H, W, 3)."""
    h, w = hw
    scale = max(h / im.height, w / im.width)
    rw, rh = max(w, round(im.width * scale)), max(h, round(im.height * scale))
    im = im.resize((rw, rh), Image.Resampling.BICUBIC)
    left, top = (rw - w) // 2, (rh - h) // 2
    return np.asarray(im.crop((left, top, left + w, top + h)), dtype=np.uint8)


def _read_folder(root: Path, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, list[str], list[tuple[str, str]]]:
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ConfigError(f"{root}: no class sub-folders (expected {root}/<class>/<image>)")
    images, labels, skipped = [], [], []
    for label, name in enumerate(classes):
        for path in sorted(p for p in (root / name).rglob("*") if p.is_file() and is_image_file(p)):
            try:
                images.append(_fit(load_image(path), hw))
                labels.append(label)
            except BadImageError as err:
                logger.warning("skipping %s: %s", path, err)
                skipped.append((str(path), str(err)))
    if not images:
        raise ConfigError(f"{root}: no readable images in {', '.join(classes)}")
    return np.stack(images), np.asarray(labels, np.int64), classes, skipped


def _read_npz(path: Path, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, int, list[tuple[str, str]]]:
    if not path.is_file():
        raise DataError(f"array file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in ("images", "labels") if k in f.files}
            files = list(f.files)
    except (OSError, ValueError, EOFError) as err:
        raise ConfigError(f"{path}: not a readable .npz array file ({err})") from None
    if len(arrays) != 2:
        raise ConfigError(f"{path}: needs arrays 'images' and 'labels', has {', '.join(files) or 'none'}")
    images, labels = arrays["images"], arrays["labels"]
    if images.ndim != 4 or images.dtype != np.uint8 or 3 not in (images.shape[1], images.shape[3]):
        got = f"{images.dtype} {images.shape}"
        raise ConfigError(f"{path}: images must be uint8 (N, H, W, 3) or (N, 3, H, W), got {got}")
    if images.shape[3] != 3:
        images = images.transpose(0, 2, 3, 1)
    if labels.shape != (len(images),) or labels.dtype.kind not in "iu" or (len(labels) and labels.min() < 0):
        got = f"{labels.dtype} {labels.shape}"
        raise ConfigError(f"{path}: labels must be {len(images)} non-negative integers, got {got}")
    if tuple(images.shape[1:3]) != tuple(hw):
        # (N, H, W, 3) -> (N, 3, H, W) float -> antialiased resize -> back to uint8 (N, h, w, 3)
        t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
        t = F.interpolate(t, size=hw, mode="bilinear", antialias=True, align_corners=False)
        images = t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return np.ascontiguousarray(images), labels.astype(np.int64), int(labels.max()) + 1, []
