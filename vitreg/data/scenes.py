"""What generated scenes look like and how they are labelled: :class:`SceneConfig`, the label rules (tasks), the
shape and colour vocabularies, and the ``key=value`` scene options of ``synthetic:...`` sources.

This module needs only numpy, so configs that nest a SceneConfig (training, diagnose, LOST) load without torch; the
rendering lives in :mod:`vitreg.data.synthetic`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from vitreg.errors import ConfigError

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "SHAPES",
    "TASKS",
    "SceneConfig",
    "Task",
    "parse_scene_options",
    "register_task",
    "split_options",
]

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "star",
    "diamond",
    "hexagon",
    "bar",
    "ellipse",
)

# Saturated object colours; backgrounds are low-saturation greys, so every object stands out from its surroundings.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "cyan": (40, 200, 210),
    "magenta": (220, 50, 200),
    "orange": (245, 140, 30),
    "purple": (120, 50, 180),
}

# flat / gradient / noise: smooth, redundant backgrounds; texture: procedural high-frequency grey noise; photo: crops
# of the photos bundled with the pinned packages (both give every background patch content of its own).
BACKGROUNDS: tuple[str, ...] = ("flat", "gradient", "noise", "texture", "photo")


@dataclass(frozen=True)
class Task:
    """A label rule. ``label`` gets the visible objects' shape ids and colour ids (K,), the labelled (largest,
    top-most) object last, and returns an int in ``range(num_classes(cfg))``. ``overlap=False`` places objects in
    separate grid cells so that none hides another (needed when the label counts them)."""

    num_classes: Callable[[SceneConfig], int]
    label: Callable[[SceneConfig, np.ndarray, np.ndarray], int]
    overlap: bool = True


TASKS: dict[str, Task] = {
    "shape": Task(num_classes=lambda cfg: len(cfg.shapes), label=lambda cfg, shapes, colors: int(shapes[-1])),
    "color": Task(num_classes=lambda cfg: len(cfg.colors), label=lambda cfg, shapes, colors: int(colors[-1])),
    "count": Task(
        num_classes=lambda cfg: cfg.max_objects - cfg.min_objects + 1,
        label=lambda cfg, shapes, colors: len(shapes) - cfg.min_objects,
        overlap=False,
    ),
    # A relation over all objects: every pair must be compared, so no single patch holds the answer.
    "distinct": Task(
        num_classes=lambda cfg: min(cfg.max_objects, len(cfg.colors)),
        label=lambda cfg, shapes, colors: len(set(colors.tolist())) - 1,
        overlap=False,
    ),
}


def register_task(name: str, task: Task) -> None:
    """Add a label rule usable as ``SceneConfig(task=name)``."""
    TASKS[name] = task


@dataclass(frozen=True)
class SceneConfig:
    """What scenes look like and how they are labelled.

    ``img_size`` is an int (square) or (H, W). Object sizes are diameters as fractions of the shorter side: the
    labelled object gets ``min_size..max_size``, the others 35-60 % of it (overlapping tasks), or up to a grid cell
    (``count``). ``task`` names an entry of :data:`TASKS`: "shape" (shape of the largest object, ``len(shapes)``
    classes), "color" (its colour, ``len(colors)`` classes), "count" (number of objects minus ``min_objects``),
    "distinct" (number of distinct colours among the objects, minus one).
    """

    img_size: int | tuple[int, int] = 64
    task: str = "shape"
    min_objects: int = 1
    max_objects: int = 3
    min_size: float = 0.3
    max_size: float = 0.6
    shapes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = tuple(COLORS)
    background: str = "noise"
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.img_size, list):
            object.__setattr__(self, "img_size", tuple(self.img_size))
        object.__setattr__(self, "shapes", tuple(self.shapes))
        object.__setattr__(self, "colors", tuple(self.colors))
        h, w = self.hw
        if h < 8 or w < 8:
            raise ConfigError(f"img_size must be at least 8 pixels, got {self.img_size!r}")
        if self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}; expected one of {', '.join(TASKS)}")
        if not self.shapes or any(s not in SHAPES for s in self.shapes) or len(set(self.shapes)) != len(self.shapes):
            raise ConfigError(f"shapes must be distinct names from {', '.join(SHAPES)}, got {self.shapes!r}")
        if not self.colors or any(c not in COLORS for c in self.colors) or len(set(self.colors)) != len(self.colors):
            raise ConfigError(f"colors must be distinct names from {', '.join(COLORS)}, got {self.colors!r}")
        if self.background not in BACKGROUNDS:
            raise ConfigError(f"unknown background {self.background!r}; expected one of {', '.join(BACKGROUNDS)}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ConfigError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        if not 0 < self.min_size <= self.max_size <= 1:
            raise ConfigError(f"need 0 < min_size <= max_size <= 1, got {self.min_size}, {self.max_size}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")

    @property
    def hw(self) -> tuple[int, int]:
        """(H, W) of the rendered images."""
        if isinstance(self.img_size, int | np.integer):
            return int(self.img_size), int(self.img_size)
        h, w = self.img_size
        return int(h), int(w)

    @property
    def num_classes(self) -> int:
        """Number of image-level classes of ``task``."""
        return TASKS[self.task].num_classes(self)

    @property
    def num_mask_classes(self) -> int:
        """Number of values in ``mask``: background + one per shape."""
        return len(self.shapes) + 1


def parse_scene_options(options: str | Mapping[str, Any], base: SceneConfig | None = None) -> SceneConfig:
    """``"task=count,img_size=96"`` (or a mapping) applied on top of ``base``.

    Values are coerced to the field's type: ``img_size=96`` or ``img_size=64x96`` (H x W), ``shapes=circle+square``
    (also ``|``-separated), ``min_size=0.2``. Unknown keys raise ``ValueError`` naming the accepted ones.
    """
    base = base if base is not None else SceneConfig()
    items = split_options(options) if isinstance(options, str) else options
    names = {f.name for f in fields(SceneConfig)}
    changes: dict[str, Any] = {}
    for key, value in items.items():
        if key not in names:
            raise ConfigError(f"unknown synthetic option {key!r}; accepted: {', '.join(sorted(names))}")
        changes[key] = _coerce(key, value)
    return replace(base, **changes)


def split_options(text: str) -> dict[str, str]:
    """``"a=1, b=x"`` -> ``{"a": "1", "b": "x"}``; an item without ``=`` raises ``ValueError``."""
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"synthetic option {item!r} is not key=value")
        pairs[key.strip()] = value.strip()
    return pairs


def _coerce(key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        if key == "img_size":
            parts = value.lower().split("x")
            return int(parts[0]) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
        if key in ("shapes", "colors"):
            return tuple(p for p in value.replace("|", "+").split("+") if p)
        if key in ("min_objects", "max_objects", "seed"):
            return int(value)
        if key in ("min_size", "max_size"):
            return float(value)
    except ValueError:
        raise ConfigError(f"bad value for synthetic option {key}: {value!r}") from None
    return value
