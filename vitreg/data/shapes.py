"""The object shapes of the generated scenes, one definition for both renderers: numpy arrays
(:mod:`vitreg.data.synthetic`) and torch tensors on any device (:mod:`vitreg.data.device_scenes`).

Each shape takes rotated unit coordinates (u, v) of pixel centres, in units of the object radius, and returns the
boolean footprint; every shape lies inside the unit disc so the drawing window [c - r, c + r] contains it. Only
operators and functions that numpy and torch share are used (``%`` is a floor modulo in both).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

Array = Any  # np.ndarray or torch.Tensor, of one shape (..., H, W)


def _xp(a: Array) -> Any:
    if isinstance(a, np.ndarray):
        return np
    import torch

    return torch


def _regular_polygon(u: Array, v: Array, n: int) -> Array:
    # Fold the angle into one sector: inside iff the distance along the edge normal is below the inradius cos(pi/n).
    xp = _xp(u)
    sector = 2 * math.pi / n
    a = xp.arctan2(v, u) % sector - sector / 2
    return xp.hypot(u, v) * xp.cos(a) <= math.cos(math.pi / n)


def _star(u: Array, v: Array, points: int = 5, inner: float = 0.45) -> Array:
    xp = _xp(u)
    sector = 2 * math.pi / points
    b = abs(xp.arctan2(v, u) % sector - sector / 2)  # 0 at a tip, pi/points between tips
    rho = xp.hypot(u, v)
    px, py = rho * xp.cos(b), rho * xp.sin(b)
    # Inside iff on the centre's side of the edge from the tip (1, 0) to the inner vertex.
    dx, dy = inner * math.cos(sector / 2) - 1.0, inner * math.sin(sector / 2)
    return dx * py - dy * (px - 1.0) >= 0


SHAPE_FNS: dict[str, Callable[[Array, Array], Array]] = {
    "circle": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: _xp(u).maximum(abs(u), abs(v)) <= 0.7,
    "triangle": lambda u, v: _regular_polygon(u, v, 3),
    "cross": lambda u, v: ((abs(u) <= 0.28) & (abs(v) <= 0.95)) | ((abs(v) <= 0.28) & (abs(u) <= 0.95)),
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.55**2),
    "star": _star,
    "diamond": lambda u, v: abs(u) / 0.55 + abs(v) <= 1.0,
    "hexagon": lambda u, v: _regular_polygon(u, v, 6),
    "bar": lambda u, v: (abs(u) <= 0.95) & (abs(v) <= 0.28),
    "ellipse": lambda u, v: u * u + (v / 0.55) ** 2 <= 1.0,
}
