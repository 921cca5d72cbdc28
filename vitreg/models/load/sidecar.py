"""The model sidecar (``model.json`` of a run directory, ``NAME.json`` beside a weights file): read, checked, built.

A sidecar comes from wherever the weights came from, so nothing in it is trusted: every value is checked against
its field's type and a sane range, and the architecture is built once on the meta device (no memory, no weights)
so that whatever timm would refuse is refused here, as a :class:`~vitreg.errors.CheckpointError` naming the file
and the key, before any real model is built. Bounds: the file is at most :data:`MAX_SIDECAR_BYTES`; the model it
describes has at most :data:`MAX_PARAMETERS` parameters.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from vitreg.errors import CheckpointError, VitregError
from vitreg.models.presets import ACTIVATIONS, MAX_REGISTERS, ModelConfig, build_model
from vitreg.typed import from_json

MAX_SIDECAR_BYTES = 1 << 20  # a model.json is a few hundred bytes
MAX_PARAMETERS = 4_000_000_000  # 3.5x the largest ViT here (ViT-g, 1.1 B)
MAX_SIDE = 8192  # input pixels per side
MAX_DEPTH = 256
MAX_WIDTH = 16384
MAX_CLASSES = 1_000_000
CHOICES = {"mlp": ("mlp", "swiglu"), "global_pool": ("token", "avg", "map"), "act": ACTIVATIONS}


def read_model_config(path: Path) -> ModelConfig:
    """The checked :class:`ModelConfig` of the sidecar at ``path``."""
    try:
        size = path.stat().st_size
        if size > MAX_SIDECAR_BYTES:
            raise CheckpointError(f"{path}: bad model config: {size} bytes, more than a model config can hold")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, RecursionError) as err:
        raise CheckpointError(f"{path}: cannot read the model config ({err})") from None
    except ValueError as err:  # json.JSONDecodeError, or an integer too long to convert
        raise CheckpointError(f"{path}: bad model config: not valid JSON ({err})") from None
    return check_model_config(data, path)


def check_model_config(data: Any, path: Path | str) -> ModelConfig:
    """``data`` (a sidecar's JSON) as a ModelConfig whose values fit their types and ranges and whose architecture
    can be built; CheckpointError naming ``path`` and the key otherwise."""
    where = f"{path}: bad model config"
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: expected a JSON object of model settings, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise CheckpointError(f"{where}: unknown key {unknown[0]!r}; allowed keys: {', '.join(sorted(known))}")
    if "spec" not in data:
        raise CheckpointError(f"{where}: spec is missing")
    cfg = from_json(ModelConfig, data, where, CheckpointError)  # the one typed decoder, as for every JSON file
    _check_ranges(cfg, where)
    _check_builds(cfg, where)
    return cfg


def _fail(where: str, key: str, rule: str, value: Any) -> CheckpointError:
    return CheckpointError(f"{where}: {key} must be {rule}, got {value!r}")


def _int_in(where: str, key: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise _fail(where, key, f"between {lo} and {hi}", value)


def _check_ranges(cfg: ModelConfig, where: str) -> None:
    _int_in(where, "registers", cfg.registers, 0, MAX_REGISTERS)
    _int_in(where, "test_time_registers", cfg.test_time_registers, 0, MAX_REGISTERS)
    for block, unit in cfg.register_neurons:
        _int_in(where, "register_neurons", block, 0, cfg.depth - 1)
        _int_in(where, "register_neurons", unit, 0, int(cfg.embed_dim * cfg.mlp_ratio) - 1)
    if not (math.isfinite(cfg.norm_eps) and 0 < cfg.norm_eps < 1):
        raise _fail(where, "norm_eps", "in (0, 1)", cfg.norm_eps)
    for side in cfg.img_size:
        _int_in(where, "img_size", side, 1, MAX_SIDE)
    _int_in(where, "patch_size", cfg.patch_size, 1, min(cfg.img_size))
    _int_in(where, "embed_dim", cfg.embed_dim, 1, MAX_WIDTH)
    _int_in(where, "depth", cfg.depth, 1, MAX_DEPTH)
    _int_in(where, "num_heads", cfg.num_heads, 1, cfg.embed_dim)
    if cfg.embed_dim % cfg.num_heads:
        raise _fail(where, "num_heads", f"a divisor of embed_dim={cfg.embed_dim}", cfg.num_heads)
    _int_in(where, "num_classes", cfg.num_classes, 0, MAX_CLASSES)
    if not (math.isfinite(cfg.mlp_ratio) and 0 < cfg.mlp_ratio <= 64):
        raise _fail(where, "mlp_ratio", "a number in (0, 64]", cfg.mlp_ratio)
    if cfg.init_values is not None and not math.isfinite(cfg.init_values):
        raise _fail(where, "init_values", "a finite number or null", cfg.init_values)
    if not (math.isfinite(cfg.drop_path_rate) and 0 <= cfg.drop_path_rate < 1):
        raise _fail(where, "drop_path_rate", "in [0, 1)", cfg.drop_path_rate)
    if not all(math.isfinite(v) for v in cfg.mean):
        raise _fail(where, "mean", "3 finite numbers", list(cfg.mean))
    if not all(math.isfinite(v) and v > 0 for v in cfg.std):
        raise _fail(where, "std", "3 positive finite numbers", list(cfg.std))
    if cfg.dist_token and (cfg.registers or not cfg.class_token or cfg.global_pool != "token" or cfg.is_timm):
        raise _fail(where, "dist_token", "false unless with [CLS], token pooling, no registers and no timm name", True)
    for key, allowed in CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise _fail(where, key, f"one of {', '.join(allowed)}", getattr(cfg, key))
    grid = (cfg.img_size[0] // cfg.patch_size) * (cfg.img_size[1] // cfg.patch_size)
    d = cfg.embed_dim
    params = cfg.depth * (4 + 2 * cfg.mlp_ratio) * d * d + (grid + 1 + cfg.registers + cfg.num_classes) * d
    params += 3 * cfg.patch_size**2 * d
    if params > MAX_PARAMETERS:
        raise CheckpointError(f"{where}: describes a model of about {params:.3g} parameters (at most {MAX_PARAMETERS})")


def _check_builds(cfg: ModelConfig, where: str) -> None:
    import torch

    try:
        with torch.device("meta"):  # shapes only: no memory, no random numbers drawn
            build_model(dataclasses.replace(cfg))
    except VitregError as err:
        raise CheckpointError(f"{where}: {err}") from None
    except (TypeError, ValueError, AssertionError, RuntimeError, KeyError, IndexError) as err:
        # timm refuses the combination (e.g. a class_token=false model with a [CLS] head, an unknown timm option)
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{where}: timm cannot build this architecture ({detail})") from None
