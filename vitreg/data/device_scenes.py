"""Generated scenes rendered by torch on the training device (a GPU: nothing is transferred per step), from
``(seed, index)`` alone: any batch of indices renders the same images on any device, so a run resumes exactly.

The scenes follow :class:`~vitreg.data.scenes.SceneConfig` for the tasks whose objects sit in separate grid cells
(``count``, ``distinct``) on a ``flat`` or ``texture`` background. They come from their own random numbers (a
counter-based hash of seed, index and draw), so they are scenes of the same kind as :mod:`vitreg.data.synthetic`'s,
not the same pictures: a model trained on one renderer is evaluated on the same renderer (data ``kind: device``
for training, image source ``device-scenes`` for diagnose and the lab).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from vitreg.data.scenes import COLORS, TASKS, SceneConfig
from vitreg.data.shapes import SHAPE_FNS
from vitreg.data.synthetic import SyntheticScenes
from vitreg.errors import ConfigError

DEVICE_TASKS = ("count", "distinct")
DEVICE_BACKGROUNDS = ("flat", "texture")
MIN_RADIUS = 1.5  # pixels, as the numpy renderer
_MASK64 = (1 << 64) - 1


def _signed(v: int) -> int:
    v &= _MASK64
    return v - (1 << 64) if v >= 1 << 63 else v


_GOLDEN, _MIX1, _MIX2 = _signed(0x9E3779B97F4A7C15), _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _shr(z: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (z >> n) & ((1 << (64 - n)) - 1)


def uniforms(seed: int, index: torch.Tensor, stream: int, count: int) -> torch.Tensor:
    """(B, count) floats in [0, 1), a pure function of (seed, index, stream, position): splitmix64 of a counter."""
    k = torch.arange(count, device=index.device, dtype=torch.int64)
    z = (index.to(torch.int64)[:, None] * 1_000_003 + stream) * 65_537 + k[None, :] + seed * 7_919
    z = z * _GOLDEN
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    z = z ^ _shr(z, 31)
    return _shr(z, 40).to(torch.float32) / float(1 << 24)


def check_device_scenes(cfg: SceneConfig) -> None:
    if cfg.task not in DEVICE_TASKS or cfg.background not in DEVICE_BACKGROUNDS:
        raise ConfigError(
            f"device scenes render tasks {', '.join(DEVICE_TASKS)} on backgrounds {', '.join(DEVICE_BACKGROUNDS)}; "
            f"got task={cfg.task}, background={cfg.background}"
        )


def _background(cfg: SceneConfig, index: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, H, W, 3) float in 0..255: a grey with a slight tint, plus blocky noise at 8, 4 and 2 px and grain."""
    b = index.shape[0]
    u = uniforms(cfg.seed, index, 1, 4)
    base = (60 + 130 * u[:, :1] + (u[:, 1:4] - 0.5) * 30)[:, None, None, :]  # (B, 1, 1, 3)
    out = base.expand(b, h, w, 3).clone()
    if cfg.background == "flat":
        return out
    for octave, (cell, amp) in enumerate(((8, 30.0), (4, 22.0), (2, 15.0))):
        gh, gw = -(-h // cell) + 1, -(-w // cell) + 1
        noise = (uniforms(cfg.seed, index, 10 + octave, gh * gw) * 2 - 1).reshape(b, gh, gw) * amp
        shift = (uniforms(cfg.seed, index, 20 + octave, 2) * cell).long()  # (B, 2): cells off the patch grid
        ys = (torch.arange(h, device=index.device)[None, :] + shift[:, :1]) // cell  # (B, H)
        xs = (torch.arange(w, device=index.device)[None, :] + shift[:, 1:]) // cell  # (B, W)
        rows = noise.gather(1, ys[:, :, None].expand(b, h, gw))  # (B, H, gw)
        out += rows.gather(2, xs[:, None, :].expand(b, h, w))[..., None]
    grain = (uniforms(cfg.seed, index, 30, h * w) * 2 - 1).reshape(b, h, w, 1) * 14.0  # std ~8, as the numpy one
    return out + grain


def _layout(cfg: SceneConfig, index: torch.Tensor, h: int, w: int) -> dict[str, torch.Tensor]:
    """Per image and object slot k < max_objects: valid (B, K), centre and radius in pixels, shape and colour ids.
    Objects sit one per cell of a g x g grid (g^2 >= max_objects), as the numpy renderer places counted objects."""
    k_max = cfg.max_objects
    g = math.ceil(math.sqrt(k_max))
    short = min(h, w)
    cell_h, cell_w = h / g, w / g
    u = uniforms(cfg.seed, index, 2, 1 + g * g + 5 * k_max)
    n = cfg.min_objects + (u[:, 0] * (k_max - cfg.min_objects + 1)).long().clamp(max=k_max - cfg.min_objects)
    cells = u[:, 1 : 1 + g * g].argsort(dim=1)[:, :k_max]  # (B, K) a random cell per slot
    d = u[:, 1 + g * g :].reshape(-1, k_max, 5)  # (B, K, 5): radius, x, y, shape, colour
    r_cap = max(0.45 * min(cell_h, cell_w), MIN_RADIUS)
    r = (cfg.min_size + d[..., 0] * (cfg.max_size - cfg.min_size)) * short / 2
    r = r.clamp(min=MIN_RADIUS, max=r_cap)
    row, col = cells // g, cells % g
    x_lo, x_hi = col * cell_w + r, (col + 1) * cell_w - r
    y_lo, y_hi = row * cell_h + r, (row + 1) * cell_h - r
    cx = torch.where(x_hi > x_lo, x_lo + d[..., 1] * (x_hi - x_lo), (x_lo + x_hi) / 2)
    cy = torch.where(y_hi > y_lo, y_lo + d[..., 2] * (y_hi - y_lo), (y_lo + y_hi) / 2)
    shape = (d[..., 3] * len(cfg.shapes)).long().clamp(max=len(cfg.shapes) - 1)
    color = (d[..., 4] * len(cfg.colors)).long().clamp(max=len(cfg.colors) - 1)
    valid = torch.arange(k_max, device=index.device)[None, :] < n[:, None]
    return {"valid": valid, "cx": cx, "cy": cy, "r": r, "shape": shape, "color": color, "n": n}


def labels(cfg: SceneConfig, index: torch.Tensor) -> torch.Tensor:
    """(B,) int64 labels of the scenes ``index``, without rendering them."""
    h, w = cfg.hw
    lay = _layout(cfg, index, h, w)
    if cfg.task == "count":
        return lay["n"] - cfg.min_objects
    onehot = torch.nn.functional.one_hot(lay["color"], len(cfg.colors)) * lay["valid"][..., None]  # (B, K, C)
    return onehot.amax(1).sum(1) - 1  # distinct colours - 1


def render(cfg: SceneConfig, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scenes ``index`` (B,) on ``index.device``: images uint8 (B, H, W, 3) and masks int64 (B, H, W) (0 background,
    shape id + 1), as the numpy renderer's."""
    check_device_scenes(cfg)
    h, w = cfg.hw
    lay = _layout(cfg, index, h, w)
    img = _background(cfg, index, h, w)
    mask = torch.zeros(index.shape[0], h, w, dtype=torch.int64, device=index.device)
    ys = torch.arange(h, device=index.device, dtype=torch.float32)[None, :, None] + 0.5  # (1, H, 1)
    xs = torch.arange(w, device=index.device, dtype=torch.float32)[None, None, :] + 0.5  # (1, 1, W)
    palette = torch.tensor([COLORS[c] for c in cfg.colors], dtype=torch.float32, device=index.device)  # (C, 3)
    fns = [SHAPE_FNS[s] for s in cfg.shapes]
    for k in range(cfg.max_objects):
        r = lay["r"][:, k, None, None]
        u, v = (xs - lay["cx"][:, k, None, None]) / r, (ys - lay["cy"][:, k, None, None]) / r  # (B, H, W)
        inside = torch.stack([fn(u, v) for fn in fns])  # (S, B, H, W)
        sid = lay["shape"][:, k]
        hit = inside.gather(0, sid[None, :, None, None].expand(1, -1, h, w))[0] & lay["valid"][:, k, None, None]
        img = torch.where(hit[..., None], palette[lay["color"][:, k]][:, None, None, :], img)
        mask = torch.where(hit, sid[:, None, None] + 1, mask)
    return img.round().clamp(0, 255).to(torch.uint8), mask


class DeviceScenes:
    """``n`` scenes of ``cfg`` from index ``start`` on ``device``; indexing with a tensor of positions or a slice
    renders those images, uint8 (B, H, W, 3) on the device (what training's uint8 image cache holds)."""

    def __init__(self, cfg: SceneConfig, n: int, start: int = 0, device: Any = "cpu"):
        check_device_scenes(cfg)
        if cfg.task not in TASKS:
            raise ConfigError(f"unknown task {cfg.task!r}")
        self.cfg, self.n, self.start, self.device = cfg, int(n), int(start), torch.device(device)
        self.labels = _Labels(self)

    def __len__(self) -> int:
        return self.n

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.n, *self.cfg.hw, 3)

    def indices(self, key: Any) -> torch.Tensor:
        if isinstance(key, slice):
            key = torch.arange(self.n)[key]
        idx = torch.as_tensor(key, dtype=torch.int64).reshape(-1)
        return idx.to(self.device) + self.start

    def __getitem__(self, key: Any) -> torch.Tensor:
        return render(self.cfg, self.indices(key))[0]


class _Labels:
    def __init__(self, scenes: DeviceScenes):
        self.scenes = scenes

    def __len__(self) -> int:
        return self.scenes.n

    def __getitem__(self, key: Any) -> torch.Tensor:
        return labels(self.scenes.cfg, self.scenes.indices(key))


class DeviceScenesDataset(SyntheticScenes):
    """``n`` device scenes as sample dicts (``image``, ``index``, ``path``, ``label``, ``mask``; no boxes), rendered
    one by one on the CPU: the images source ``device-scenes`` for diagnosing models trained on them."""

    def __init__(self, n: int, cfg: SceneConfig, transform: Callable[[Any], Any] | None = None):
        check_device_scenes(cfg)
        super().__init__(n, cfg, transform)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from PIL import Image

        from vitreg.data.loader import make_sample

        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} scenes")
        idx = torch.tensor([index])
        image, mask = render(self.cfg, idx)
        return make_sample(
            Image.fromarray(image[0].numpy()),
            self.transform,
            index=index,
            path=f"device-scenes/seed{self.cfg.seed}/{index}",
            label=int(labels(self.cfg, idx)[0]),
            dense={"mask": mask[0].numpy()},
        )
