"""What a checkpoint format is to vitreg: :class:`Format` (how it is recognised, how its files state the
architecture, how its weights map onto timm) and :class:`Layout` (a state dict's keys -> timm's), plus the small
readers the format modules share.

Light at import (no torch, no timm): the registry is read by ``--help`` and by the error messages.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitreg.errors import CheckpointError

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from vitreg.models.presets import ModelConfig

StateDict = dict[str, "torch.Tensor"]
RGB = tuple[float, float, float]
#: Where transformers and timm save a model's weights on the Hub (safetensors first; a .bin is read weights-only);
#: a large model's weights are sharded, named by an index (``*.index.json``: its ``weight_map`` names every shard)
HUB_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
SHARD_INDEX = ".index.json"
#: Pickled training containers, read with ``torch.load(weights_only=True)`` (a .ckpt is Lightning's)
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
#: Files that hold weights as weights (a format may claim more, e.g. an ONNX graph: its ``suffixes``)
WEIGHT_SUFFIXES = (".safetensors", *CHECKPOINT_SUFFIXES)


@dataclass(frozen=True)
class Layout:
    """The keys of one family of state dicts, and how they become the keys of the timm model they load into.

    ``recognise(sd)`` is True for a state dict in this layout (used only for a weights file given with a named
    architecture, ``--model ARCH --weights FILE``: a folder's format fixes its layout). ``to_timm(sd, model)`` returns
    ``sd`` in the keys of ``model`` (a timm VisionTransformer or Eva), position embedding resampled to its grid."""

    name: str
    recognise: Callable[[StateDict], bool]
    to_timm: Callable[[StateDict, nn.Module], StateDict]


@dataclass(frozen=True)
class Format:
    """One checkpoint format vitreg reads. A format is recognised in one of four ways, tried in this order:

    - ``prefix``: a name prefix (``openclip:``, ``torchvision:``, ``timm:``), read by ``read_name``;
    - ``claims_name``: names without prefix it claims (the DINOv2 hub names, vitreg's presets), read by
      ``read_name``;
    - ``config_file`` + ``claims``: a folder holding that file, whose parsed content the format claims (without
      ``claims``: a ``model_type`` among ``model_types``, as transformers' ``config.json`` states it; with neither,
      the file's presence is enough and it is left to ``read_config`` to parse), read by ``read_config``, its
      weights in ``weight_files``;
    - ``claims_file``: a file it claims (a ``.onnx`` file; a weights file with a ``.json`` sidecar), read by
      ``read_file``.

    ``layout`` maps its weights onto timm. ``owner`` is the Python distribution that owns the format (its version
    is what the parity test ran against); ``what``/``command``/``resampling`` are the README's row; ``accepted`` its
    short name in the "accepted:" list of error messages."""

    key: str
    owner: str
    what: str
    command: str
    accepted: str
    recognised_by: str
    states_architecture: str
    order: int = 50
    prefix: str = ""
    claims_name: Callable[[str], bool] | None = None
    config_file: str = ""
    parse_config: bool = True  # False: read_config gets {} and reads config_file itself (with its own checks)
    claims: Callable[[dict[str, Any]], bool] | None = None
    model_types: tuple[str, ...] = ()
    weight_files: tuple[str, ...] = ()
    claims_file: Callable[[Path], bool] | None = None
    read_config: Callable[[dict[str, Any], Path], ModelConfig] | None = None
    read_name: Callable[..., ModelConfig] | None = None
    name_options: bool = False  # read_name applies registers, image size and options itself (presets, timm names)
    read_file: Callable[[Path], tuple[ModelConfig, Layout]] | None = None
    read_weights: Callable[[Path], StateDict] | None = None  # a file whose weights are no plain checkpoint (ONNX)
    suffixes: tuple[str, ...] = ()  # the file names it claims end so (a spec with one is a path, not a name)
    layout: Layout | None = None
    # how the position table is resampled at another --img-size: the owner's way (resampling.py), for the README
    resampling: str = "bicubic, antialiased (timm)"
    # how a photo is resized and cropped by default (--resize model): its owner's processor (models/processor.py)
    preprocessing: str = "vitreg's squash"

    def claims_config(self, data: dict[str, Any]) -> bool:
        """Whether this format claims a folder whose ``config_file`` parsed to ``data``."""
        if self.claims is not None:
            return self.claims(data)
        return not self.model_types or data.get("model_type") in self.model_types


@dataclass
class Resolved:
    """What a model spec resolved to, once: its architecture, the file its weights are in (None: random weights on
    purpose, or only the architecture was asked for), the format that read it and the layout of its weights (None:
    a weights file given with a named architecture, whose layout its keys say when it is read)."""

    config: ModelConfig
    weights: Path | None
    format: Format
    layout: Layout | None
    base: Resolved | None = None  # a delta's base model (vitreg_delta): loaded first, then the delta applied
    weights_key: str | None = None  # the checkpoint key to take the weights from (None: modelfile.WEIGHT_KEYS' rule)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise CheckpointError(f"{path}: not a readable JSON config ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def preprocessor(folder: Path) -> dict[str, Any]:
    """A transformers folder's ``preprocessor_config.json`` ({} when absent)."""
    pre = folder / "preprocessor_config.json"
    return read_json(pre) if pre.is_file() else {}


def mean_std(pre: dict[str, Any], default: tuple[RGB, RGB]) -> tuple[RGB, RGB]:
    """``image_mean`` / ``image_std`` of a preprocessor config (3 numbers each), else ``default``."""
    mean, std = pre.get("image_mean"), pre.get("image_std")
    if isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3:
        try:
            return (float(mean[0]), float(mean[1]), float(mean[2])), (float(std[0]), float(std[1]), float(std[2]))
        except (TypeError, ValueError):
            pass
    return default


def with_processor(cfg: ModelConfig, pre: dict[str, Any], name: str, where: Path | str = "") -> ModelConfig:
    """``cfg`` prepared as transformers' ``name`` image processor does it (models/processor.py), reading ``pre`` (a
    ``preprocessor_config.json``, {} when absent: the class's defaults). The crop a preprocessor_config.json states
    is the model's input size (a DINOv2 folder's table is 518 px, its processor crops 224), when it is a whole number
    of patches."""
    from vitreg.models.processor import hf_processor

    proc, crop = hf_processor(pre, name)
    cfg.processor = proc
    if crop is not None and crop % cfg.patch_size == 0 and (crop, crop) != tuple(cfg.img_size):
        cfg.img_size = (crop, crop)
        cfg.source += f"; input {crop} px, its processor's crop ({where or 'preprocessor_config.json'})"
    return cfg


def ints(cfg: dict[str, Any], where: Path | str, what: str, *keys: str) -> list[int]:
    """The integer values of ``keys`` in a config (CheckpointError naming the file and the key)."""
    out = []
    for k in keys:
        v = cfg.get(k)
        if isinstance(v, list | tuple) and len(v) == 2 and v[0] == v[1]:  # square sizes written as [H, W]
            v = v[0]
        if isinstance(v, bool) or not isinstance(v, int | float) or int(v) != v or v < 1:
            raise CheckpointError(f"{where}: a {what} config needs a positive integer {k!r}, got {v!r}")
        out.append(int(v))
    return out


def number(cfg: dict[str, Any], where: Path | str, key: str, default: float | None = None) -> float:
    v = cfg.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise CheckpointError(f"{where}: {key} must be a number, got {v!r}")
    return float(v)


def mlp_ratio(hidden: int, dim: int) -> float:
    """``hidden / dim`` such that timm's ``int(dim * mlp_ratio)`` gives ``hidden`` back exactly."""
    ratio = hidden / dim
    return ratio if int(dim * ratio) == hidden else (hidden + 0.5) / dim


def strip_prefix(sd: StateDict, *prefixes: str) -> StateDict:
    """``sd`` with the first of ``prefixes`` that some key starts with removed, keeping only the keys under it."""
    for p in prefixes:
        if p and any(k.startswith(p) for k in sd):
            return {k[len(p) :]: v for k, v in sd.items() if k.startswith(p)}
    return sd
