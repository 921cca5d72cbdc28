"""A lab grid file (YAML)::

    base: artifact_lab          # packaged config name or YAML path
    seeds: [0, 1, 2]
    registers: [0, 4]
    diagnose_limit: 256
    points:
      d12_lr1e-3: {depth: 12, lr: 1.0e-3}
      d6: {depth: 6}

Every point's overrides are checked against the training config (naming a bad key or value) before any training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vitreg.config import from_dict, yaml_error
from vitreg.errors import ConfigError
from vitreg.stages import EVAL_SCENE_SEED
from vitreg.train.config import TrainConfig, load_train_config

GRID_KEYS = {"base", "seeds", "registers", "diagnose_limit", "points", "scene_seed"}


@dataclass
class Grid:
    base: str
    points: dict[str, dict[str, Any]]
    seeds: list[int] = field(default_factory=lambda: [0])
    registers: list[int] = field(default_factory=lambda: [0, 4])
    diagnose_limit: int = 256
    scene_seed: int = EVAL_SCENE_SEED

    def config(self, point: str) -> TrainConfig:
        """The resolved training config of ``point`` (its registers and seed are set per model)."""
        return load_train_config(self.base, overrides(self.points[point]))


def load_grid(path: Path) -> Grid:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(yaml_error(path, err)) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot be read ({getattr(err, 'strerror', None) or err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a grid file holds a mapping (base, seeds, registers, points)")
    unknown = sorted(str(k) for k in set(data) - GRID_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(GRID_KEYS))}")
    if "base" not in data:
        raise ConfigError(f"{path}: 'base' must name the training config the points change")
    if not isinstance(data.get("points"), dict) or not data["points"]:
        raise ConfigError(f"{path}: 'points' must map names to config overrides")
    try:
        grid = from_dict(Grid, data)  # every value checked against its type (seeds: [0, 1], base: a name)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    for name, point in grid.points.items():
        if not isinstance(point, dict):
            raise ConfigError(f"{path}: point {name!r} must be a mapping of config keys to values")
        try:
            grid.config(name)  # a bad key or value fails here, naming it, before any training
        except ConfigError as err:
            raise ConfigError(f"{path}: point {name!r}: {err}") from None
    return grid


MAX_NESTING = 8  # data.scene.task is 3 deep; a YAML alias can make a point contain itself


def overrides(point: dict[str, Any], prefix: str = "") -> list[str]:
    """A point as ``key=value`` overrides, nested mappings dotted (``data.scene.task=count``)."""
    if prefix.count(".") >= MAX_NESTING:
        raise ConfigError(f"{prefix[:60]}...: nested deeper than any config key (a point that contains itself?)")
    out = []
    for k, v in point.items():
        if isinstance(v, dict):
            out += overrides(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}={_yaml_value(v)}")
    return out


def _yaml_value(v: Any) -> str:
    """A value as ``key=value`` overrides spell it (lists are comma-separated, like ``registers=0,4``)."""
    if isinstance(v, list | tuple):
        return ",".join(_yaml_value(x) for x in v)
    return "null" if v is None else "true" if v is True else "false" if v is False else str(v)
