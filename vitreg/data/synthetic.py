"""Procedural scenes: coloured shapes on smooth backgrounds, with exact labels, boxes, masks and depth.

Scenes are a dataset that needs no download and has known ground truth for every probe (classification, boxes for
CorLoc, semantic/instance masks, depth). Backgrounds are deliberately low-frequency: large, redundant background
regions are where ViTs without registers grow high-norm artifact tokens, so the generator provides plenty of them.

Every scene is a pure function of ``(cfg, index)``: the random generator is seeded with ``(cfg.seed, index)``, so any
worker can render any index, and the same config always gives the same arrays.

Conventions (all arrays numpy, ``H, W = cfg.hw``):

* ``image`` uint8 (H, W, 3);
* ``boxes`` float32 (K, 4) xyxy in pixel-edge coordinates with exclusive right/bottom edges: an object whose visible
  pixels span columns c0..c1 and rows r0..r1 (inclusive) has the box ``(c0, r0, c1 + 1, r1 + 1)``;
* class ids index ``cfg.shapes`` (``box_labels``) and ``cfg.colors`` (``colors``); ``mask`` is ``shape id + 1`` with
  0 for background, ``instances`` is ``object k + 1`` matching row k of ``boxes``; later objects are drawn on top and
  boxes cover only what remains visible; objects hidden entirely are dropped;
* ``depth`` float32 in [0.08, 1.0], larger is farther: the background is a ground plane receding toward the top
  (about 0.975 at the top row, 0.45 at the bottom, with a slight sideways tilt; always within [0.425, 1.0]), each
  object a constant or gently slanted surface in [0.08, 0.42], nearer than every background pixel, later objects
  nearer.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vitreg.data.loader import make_sample
from vitreg.data.photos import bundled_photo_paths
from vitreg.data.scenes import (
    BACKGROUNDS,
    COLORS,
    SHAPES,
    TASKS,
    SceneConfig,
    Task,
    parse_scene_options,
    register_task,
    split_options,
)
from vitreg.data.shapes import SHAPE_FNS
from vitreg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ImageTransform
from vitreg.errors import DataError

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "SHAPES",
    "TASKS",
    "Scene",
    "SceneConfig",
    "SyntheticScenes",
    "Task",
    "parse_scene_options",
    "register_task",
    "render_arrays",
    "render_scene",
    "split_options",
]

# Depth layout (see the module docstring).
_BG_FAR, _BG_NEAR, _BG_TILT = 1.0, 0.45, 0.05
_OBJ_DEPTH = (0.12, 0.38)
_OBJ_SLANT = 0.04
_MIN_RADIUS = 3.0  # pixels: every shape keeps a few visible pixels at this size
_COLOR_JITTER = 12


@dataclass
class Scene:
    """One rendered scene (see the module docstring for the conventions). K = number of visible objects."""

    image: np.ndarray  # uint8 (H, W, 3)
    label: int
    boxes: np.ndarray  # float32 (K, 4) xyxy, exclusive right/bottom edges
    box_labels: np.ndarray  # int64 (K,) shape ids
    mask: np.ndarray  # int64 (H, W): 0 background, shape id + 1
    instances: np.ndarray  # int64 (H, W): 0 background, k + 1 for boxes[k]
    depth: np.ndarray  # float32 (H, W), larger = farther
    colors: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # int64 (K,) colour ids


# -- shapes: vitreg.data.shapes (one definition for this renderer and the device one) ------------------------


# -- rendering -----------------------------------------------------------------------------------------------------


PHOTO_SIDE = 256  # bundled photos are kept at most this large for background crops
PHOTO_SATURATION = 0.35  # photo backgrounds keep this much of their colour, so objects stay salient


@functools.lru_cache(maxsize=1)
def _photo_pool() -> tuple[np.ndarray, ...]:
    """The photos bundled with the pinned packages (:data:`vitreg.data.photos.PHOTO_FILES`), RGB uint8, each at
    most PHOTO_SIDE on its long side; the same files, in the same order, on every machine with the same pins."""
    pool = []
    for path in bundled_photo_paths():
        with Image.open(path) as f:
            im = f.convert("RGB")
            im.thumbnail((PHOTO_SIDE, PHOTO_SIDE), Image.Resampling.BICUBIC)
            pool.append(np.asarray(im, np.uint8))
    if not pool:
        raise DataError("background=photo needs the sample photos of scikit-image / scikit-learn / matplotlib")
    return tuple(pool)


def _photo_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random crop (a quarter to all of the photo's short side, flipped half the time) of a bundled photo,
    resized to (H, W) and desaturated: real-image texture instead of a redundant flat background."""
    pool = _photo_pool()
    photo = pool[int(rng.integers(len(pool)))]
    ph, pw = photo.shape[:2]
    side = int(rng.uniform(0.25, 1.0) * min(ph, pw))
    side = max(side, 8)
    y0, x0 = int(rng.integers(ph - side + 1)), int(rng.integers(pw - side + 1))
    crop = Image.fromarray(photo[y0 : y0 + side, x0 : x0 + side]).resize((w, h), Image.Resampling.BILINEAR)
    x = np.asarray(crop, np.float32)  # (H, W, 3)
    if rng.random() < 0.5:
        x = x[:, ::-1]
    gray = x.mean(-1, keepdims=True)
    return gray + PHOTO_SATURATION * (x - gray)


def _texture_background(rng: np.random.Generator, base: np.ndarray, h: int, w: int) -> np.ndarray:
    """High-frequency grey texture: value noise at cell sizes of 2 to 8 pixels plus per-pixel grain, so no two
    background patches carry the same content (a flat background makes every patch a ready-made sink)."""
    out = np.broadcast_to(base.astype(np.float32), (h, w, 3)).copy()
    for cell, amp in ((8, 30.0), (4, 22.0), (2, 15.0)):
        gh, gw = -(-h // cell) + 1, -(-w // cell) + 1
        coarse = rng.uniform(-amp, amp, size=(gh, gw, 1)).astype(np.float32)
        dy, dx = (int(v) for v in rng.integers(cell, size=2))  # cells not aligned with the patch grid
        out += np.repeat(np.repeat(coarse, cell, 0), cell, 1)[dy : dy + h, dx : dx + w]
    out += rng.normal(0, 8.0, size=(h, w, 1)).astype(np.float32)
    return out


def _background(rng: np.random.Generator, kind: str, h: int, w: int) -> np.ndarray:
    """The background, float32 (H, W, 3) in 0..255: smooth and low-saturation (flat, gradient, noise), or textured
    (texture: procedural high-frequency grey noise; photo: crops of real photos)."""
    if kind == "photo":
        return _photo_background(rng, h, w)
    base = rng.uniform(60, 190) + rng.uniform(-15, 15, size=3)  # grey with a slight tint
    if kind == "texture":
        return _texture_background(rng, base, h, w)
    if kind == "flat":
        return np.broadcast_to(base.astype(np.float32), (h, w, 3)).copy()
    ys = (np.arange(h, dtype=np.float32) + 0.5) / h  # (H,)
    xs = (np.arange(w, dtype=np.float32) + 0.5) / w  # (W,)
    if kind == "gradient":
        other = base + rng.uniform(-70, 70) + rng.uniform(-10, 10, size=3)
        theta = rng.uniform(0, 2 * math.pi)
        t = (xs[None, :] - 0.5) * math.cos(theta) + (ys[:, None] - 0.5) * math.sin(theta)  # (H, W)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        return (base[None, None, :] + t[:, :, None] * (other - base)[None, None, :]).astype(np.float32)
    # "noise": value noise on a coarse 4x4 grid, smoothstep-interpolated -> a few soft blobs over the whole image.
    grid = 4
    knots = (base + rng.uniform(-45, 45, size=(grid, grid, 1)) + rng.uniform(-8, 8, size=(grid, grid, 3))).astype(
        np.float32
    )  # (g, g, 3)
    gy, gx = ys * (grid - 1), xs * (grid - 1)
    y0 = np.minimum(gy.astype(np.int64), grid - 2)
    x0 = np.minimum(gx.astype(np.int64), grid - 2)
    fy, fx = gy - y0, gx - x0
    fy, fx = (fy * fy * (3 - 2 * fy))[:, None, None], (fx * fx * (3 - 2 * fx))[None, :, None]
    top = knots[y0][:, x0] * (1 - fx) + knots[y0][:, x0 + 1] * fx  # (H, W, 3)
    bottom = knots[y0 + 1][:, x0] * (1 - fx) + knots[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _layout(rng: np.random.Generator, cfg: SceneConfig, overlap: bool) -> list[tuple[float, float, float]]:
    """(cx, cy, radius) in pixels for each object, the labelled (largest) one last."""
    h, w = cfg.hw
    short = min(h, w)
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    if overlap:
        r_main = max(rng.uniform(cfg.min_size, cfg.max_size) * short / 2, _MIN_RADIUS)
        radii = [max(r_main * rng.uniform(0.35, 0.6), _MIN_RADIUS) for _ in range(n - 1)] + [r_main]
        out = []
        for r in radii:
            # Keep every object inside the image so its box is its true extent, not a border crop.
            cx = rng.uniform(min(r, w / 2), max(w - r, w / 2))
            cy = rng.uniform(min(r, h / 2), max(h - r, h / 2))
            out.append((float(cx), float(cy), float(r)))
        return out
    # Non-overlapping: one object per cell of a g x g grid (g^2 >= max_objects), each within its cell.
    g = math.ceil(math.sqrt(cfg.max_objects))
    cell_h, cell_w = h / g, w / g
    r_cap = max(0.45 * min(cell_h, cell_w), _MIN_RADIUS)
    cells = rng.permutation(g * g)[:n]
    out = []
    for cell in cells:
        r = min(max(rng.uniform(cfg.min_size, cfg.max_size) * short / 2, _MIN_RADIUS), r_cap)
        row, col = divmod(int(cell), g)
        x_lo, x_hi = col * cell_w + r, (col + 1) * cell_w - r
        y_lo, y_hi = row * cell_h + r, (row + 1) * cell_h - r
        cx = rng.uniform(x_lo, x_hi) if x_hi > x_lo else (x_lo + x_hi) / 2
        cy = rng.uniform(y_lo, y_hi) if y_hi > y_lo else (y_lo + y_hi) / 2
        out.append((float(cx), float(cy), float(r)))
    return out


def render_scene(cfg: SceneConfig, index: int) -> Scene:
    """Render scene ``index`` of ``cfg``; the same (cfg, index) always gives identical arrays."""
    if index < 0:
        raise IndexError(f"scene index must be >= 0, got {index}")
    task = TASKS[cfg.task]
    rng = np.random.default_rng((cfg.seed, int(index)))
    h, w = cfg.hw

    image = np.clip(np.rint(_background(rng, cfg.background, h, w)), 0, 255).astype(np.uint8)  # (H, W, 3)
    ys = (np.arange(h, dtype=np.float32) + 0.5) / h
    xs = (np.arange(w, dtype=np.float32) + 0.5) / w
    tilt = rng.uniform(-_BG_TILT, _BG_TILT)
    # (H, W) ground plane: far at the top; the slope leaves room for the tilt so that no value exceeds _BG_FAR.
    slope = _BG_FAR - _BG_NEAR - _BG_TILT / 2
    depth = (_BG_NEAR + slope * (1.0 - ys[:, None]) + tilt * (xs[None, :] - 0.5)).astype(np.float32)
    mask = np.zeros((h, w), np.int64)
    instances = np.zeros((h, w), np.int64)

    layout = _layout(rng, cfg, task.overlap)
    n = len(layout)
    shape_ids = rng.integers(0, len(cfg.shapes), size=n)
    color_ids = rng.integers(0, len(cfg.colors), size=n)
    # Earlier objects are farther: sorted depths, largest first, so drawing order and depth order agree.
    obj_depths = np.sort(rng.uniform(*_OBJ_DEPTH, size=n))[::-1]
    windows: list[tuple[int, int, int, int]] = []
    for k, (cx, cy, r) in enumerate(layout):
        theta = rng.uniform(0, 2 * math.pi)
        jitter = rng.integers(-_COLOR_JITTER, _COLOR_JITTER + 1, size=3)
        # Depth gradient of at most _OBJ_SLANT per radius (footprints lie in the unit disc); half the objects are flat.
        phi = rng.uniform(0, 2 * math.pi)
        slant = np.array([math.cos(phi), math.sin(phi)]) * rng.uniform(0, _OBJ_SLANT) * (rng.random() < 0.5)
        x0, x1 = max(0, math.floor(cx - r)), min(w, math.ceil(cx + r) + 1)
        y0, y1 = max(0, math.floor(cy - r)), min(h, math.ceil(cy + r) + 1)
        windows.append((x0, y0, x1, y1))
        dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :] / r  # (1, w_k)
        dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None] / r  # (h_k, 1)
        c, s = math.cos(theta), math.sin(theta)
        u, v = c * dx + s * dy, -s * dx + c * dy  # (h_k, w_k) rotated unit coordinates
        footprint = SHAPE_FNS[cfg.shapes[shape_ids[k]]](u, v)  # (h_k, w_k) bool
        color = np.clip(np.asarray(COLORS[cfg.colors[color_ids[k]]]) + jitter, 0, 255).astype(np.uint8)
        image[y0:y1, x0:x1][footprint] = color
        mask[y0:y1, x0:x1][footprint] = shape_ids[k] + 1
        instances[y0:y1, x0:x1][footprint] = k + 1
        surface = obj_depths[k] + slant[0] * dx + slant[1] * dy  # (h_k, w_k): constant or slanted plane
        depth[y0:y1, x0:x1][footprint] = np.broadcast_to(surface, footprint.shape)[footprint]

    # Boxes of what stayed visible; objects hidden entirely (or with no pixel centre inside) are dropped.
    boxes, keep = [], []
    for k, (x0, y0, x1, y1) in enumerate(windows):
        rows, cols = np.nonzero(instances[y0:y1, x0:x1] == k + 1)
        if rows.size:
            boxes.append((x0 + cols.min(), y0 + rows.min(), x0 + cols.max() + 1, y0 + rows.max() + 1))
            keep.append(k)
    if len(keep) != n:
        lut = np.zeros(n + 1, np.int64)
        lut[np.asarray(keep, np.int64) + 1] = np.arange(1, len(keep) + 1)
        instances = lut[instances]
    keep_idx = np.asarray(keep, np.int64)
    box_labels = shape_ids[keep_idx].astype(np.int64)
    colors = color_ids[keep_idx].astype(np.int64)
    label = task.label(cfg, box_labels, colors)
    return Scene(
        image=image,
        label=int(label),
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        box_labels=box_labels,
        mask=mask,
        instances=instances,
        depth=depth,
        colors=colors,
    )


def render_arrays(cfg: SceneConfig, n: int, start: int = 0) -> dict[str, np.ndarray]:
    """Scenes ``start .. start + n - 1`` stacked for training caches (``np.savez`` them; :class:`ArrayDataset` reads
    the file back). Keys: ``images`` uint8 (N, H, W, 3), ``labels`` int64 (N,), ``masks`` uint8 (N, H, W) (compact:
    at most 11 values; ``.astype(np.int64)`` for losses), ``depth`` float32 (N, H, W)."""
    h, w = cfg.hw
    out: dict[str, np.ndarray] = {
        "images": np.empty((n, h, w, 3), np.uint8),
        "labels": np.empty((n,), np.int64),
        "masks": np.empty((n, h, w), np.uint8),
        "depth": np.empty((n, h, w), np.float32),
    }
    for i in range(n):
        scene = render_scene(cfg, start + i)
        out["images"][i] = scene.image
        out["labels"][i] = scene.label
        out["masks"][i] = scene.mask
        out["depth"][i] = scene.depth
    return out


class SyntheticScenes(Dataset):
    """``n`` scenes of ``cfg`` as sample dicts (see :mod:`vitreg.data.loader`).

    Samples have ``image``, ``index``, ``path`` ("synthetic/seed<seed>/<index>"), ``label``, ``boxes``,
    ``box_labels``, ``colors``, ``mask``, ``instances`` and ``depth``, the last three mapped through the transform
    (default: ImageNet normalisation at ``cfg.img_size``).
    """

    def __init__(self, n: int, cfg: SceneConfig | None = None, transform: Callable[[Image.Image], Any] | None = None):
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.n = int(n)
        self.cfg = cfg if cfg is not None else SceneConfig()
        default = ImageTransform(self.cfg.hw, IMAGENET_MEAN, IMAGENET_STD)  # identity geometry, ImageNet statistics
        self.transform = transform if transform is not None else default
        self.strict = False  # scenes never fail; kept for the loader's strict check

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += self.n
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} scenes")
        scene = render_scene(self.cfg, index)
        return make_sample(
            Image.fromarray(scene.image),
            self.transform,
            index=index,
            path=f"synthetic/seed{self.cfg.seed}/{index}",
            label=scene.label,
            boxes=scene.boxes,
            box_labels=scene.box_labels,
            per_box={"colors": torch.from_numpy(scene.colors)},
            dense={"mask": scene.mask, "instances": scene.instances, "depth": scene.depth},
        )
