"""A model stored as what changed relative to its base: registers added to a released model and the weights that
were unlocked to fit them (:mod:`vitreg.distill`), never a full copy of the base.

A delta folder holds ``delta.json`` and ``delta.safetensors``:

- ``delta.json``: the format tag, the base (its spec as ``load_model`` takes it, the sha256 of its weights file and
  the options it was loaded with), the number of registers added, the resulting architecture (a
  :class:`~vitreg.models.presets.ModelConfig`, so FLOPs and ``vitreg models`` need no weights) and free-form
  provenance (how it was made);
- ``delta.safetensors`` (fp16): ``registers`` (1, n, C), the added tokens' values; ``add.NAME``, an additive delta of
  the whole parameter NAME (new = base + delta: fp16 keeps the small difference, not the weight); ``rows.NAME`` with
  ``index.NAME``, additive deltas of some rows of NAME (the register neurons' input rows of an MLP).

:func:`apply_delta` turns a loaded base into the model. Resolving the base spec is the resolver's job
(:mod:`vitreg.models.load.checkpoints`); this module reads and writes the two files.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from vitreg import atomic
from vitreg.errors import CheckpointError
from vitreg.models.presets import ModelConfig

DELTA_CONFIG = "delta.json"
DELTA_WEIGHTS = "delta.safetensors"
DELTA_FORMAT = "vitreg-delta-1"
REGISTERS_KEY = "registers"


@dataclass
class BaseModel:
    """The model a delta applies to: its spec, the sha256 of its weights file, and how it was loaded."""

    spec: str
    sha256: str
    img_size: list[int] | None = None  # the size it was loaded at (None: its own)


@dataclass
class DeltaFile:
    """``delta.json``: the base, the registers added, the resulting architecture and how it was made."""

    base: BaseModel
    registers: int
    config: dict[str, Any]  # the ModelConfig of the result, as model.json writes it
    unlocked: list[str] = field(default_factory=list)  # parameter names the delta changes (beside the registers)
    provenance: dict[str, Any] = field(default_factory=dict)
    format: str = DELTA_FORMAT

    def model_config(self, where: Path) -> ModelConfig:
        from vitreg.models.load.sidecar import check_model_config

        return check_model_config(self.config, where)


def read_delta(folder: Path) -> DeltaFile:
    """The checked ``delta.json`` of ``folder`` (CheckpointError naming the file and key)."""
    from vitreg.typed import from_json

    path = folder / DELTA_CONFIG
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise CheckpointError(f"{path}: not a readable delta config ({err})") from None
    if not isinstance(data, dict) or data.get("format") != DELTA_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path}: not a vitreg delta (format {found!r}, expected {DELTA_FORMAT!r})")
    delta = from_json(DeltaFile, data, f"{path}: bad delta config", CheckpointError)
    if not 1 <= delta.registers <= 16:
        raise CheckpointError(f"{path}: bad delta config: registers must be between 1 and 16, got {delta.registers}")
    return delta


def delta_tensors(
    model: nn.Module, base: dict[str, torch.Tensor], rows: dict[str, torch.Tensor], first_register: int
) -> dict[str, torch.Tensor]:
    """What changed in ``model`` relative to ``base`` (the base's parameters, same names), fp16: the registers from
    token ``first_register`` on, whole parameters that differ (``add.``), and ``rows`` (name -> row index) as row
    deltas (``rows.`` + ``index.``)."""
    vit: Any = model
    out: dict[str, torch.Tensor] = {}
    regs = vit.reg_token.detach()  # (1, R, C): the model's own registers first, then the added ones
    out[REGISTERS_KEY] = regs[:, first_register - int(vit.cls_token is not None) :].half().cpu().contiguous()
    params = dict(model.named_parameters())
    for name, index in rows.items():
        d = (params[name].detach()[index] - base[name][index].to(params[name].device)).half()
        out[f"rows.{name}"], out[f"index.{name}"] = d.cpu().contiguous(), index.long().cpu().clone()
    for name, p in params.items():
        if name in rows or name in ("reg_token", "pos_embed") or name not in base:
            continue
        if not torch.equal(p.detach().cpu(), base[name].cpu()):
            out[f"add.{name}"] = (p.detach().cpu() - base[name].cpu()).half().contiguous()
    if "pos_embed" in params and "pos_embed" in base:  # compare the base's rows (the registers' zero rows are new)
        pe = params["pos_embed"].detach().cpu()
        old = base["pos_embed"].cpu()
        if pe.shape == old.shape and not torch.equal(pe, old):
            out["add.pos_embed"] = (pe - old).half().contiguous()
        elif pe.shape != old.shape:
            kept = torch.cat([pe[:, :first_register], pe[:, pe.shape[1] - old.shape[1] + first_register :]], dim=1)
            if not torch.equal(kept, old):
                out["add.pos_embed"] = (kept - old).half().contiguous()
    return out


def write_delta(folder: Path, delta: DeltaFile, tensors: dict[str, torch.Tensor]) -> Path:
    """Write ``delta.safetensors`` then ``delta.json`` (each atomically) into ``folder``."""
    atomic.make_dirs(folder)
    atomic.write_safetensors(folder / DELTA_WEIGHTS, tensors, metadata={"format": "pt"})
    atomic.write_json(folder / DELTA_CONFIG, dataclasses.asdict(delta))
    return folder


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from vitreg.models.load.filecheck import check_safetensors_header

    check_safetensors_header(path)
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({' '.join(str(err).split())})") from err


def apply_delta(model: nn.Module, folder: Path, delta: DeltaFile) -> nn.Module:
    """The base ``model`` (loaded, in place) made into the delta's model: registers appended, changed weights
    added, and its config the delta's architecture."""
    from vitreg.models.registers import append_registers

    path = folder / DELTA_WEIGHTS
    tensors = read_tensors(path)
    regs = tensors.get(REGISTERS_KEY)
    if regs is None or regs.dim() != 3 or regs.shape[1] != delta.registers:
        raise CheckpointError(f"{path}: expected {REGISTERS_KEY!r} of shape (1, {delta.registers}, C)")
    first = append_registers(model, regs.float(), "registers of a delta")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in tensors.items():
            kind, _, name = key.partition(".")
            if kind == "add":
                target = _param(params, name, path)
                if name == "pos_embed" and value.shape != target.shape:  # the base's rows: skip the registers' own
                    n = delta.registers
                    value = torch.cat([value[:, :first], value.new_zeros(1, n, value.shape[-1]), value[:, first:]], 1)
                _fit(value, target, key, path)
                target.add_(value.to(target))
            elif kind == "rows":
                target = _param(params, name, path)
                index = tensors.get(f"index.{name}")
                if index is None or index.dim() != 1 or value.shape[1:] != target.shape[1:] or len(index) != len(value):
                    raise CheckpointError(f"{path}: {key} does not fit {name} {tuple(target.shape)} with its index")
                if len(index) and (int(index.min()) < 0 or int(index.max()) >= target.shape[0]):
                    raise CheckpointError(f"{path}: index.{name} points outside {name}'s {target.shape[0]} rows")
                target.index_add_(0, index.long().to(target.device), value.to(target))
            elif kind not in (REGISTERS_KEY, "index"):
                raise CheckpointError(f"{path}: unknown tensor {key!r} (expected registers, add.*, rows.*, index.*)")
    base_cfg = getattr(model, "vitreg_config", None)
    cfg = delta.model_config(folder / DELTA_CONFIG)
    if base_cfg is not None:  # the size it was loaded at (its position table resampled there), its owner's ways
        cfg = dataclasses.replace(
            cfg, img_size=base_cfg.img_size, resampling=base_cfg.resampling, processor=base_cfg.processor
        )
    model.vitreg_config = cfg  # type: ignore[assignment]
    return model


def _param(params: dict[str, nn.Parameter], name: str, path: Path) -> nn.Parameter:
    if name not in params:
        raise CheckpointError(f"{path}: changes {name!r}, which the base model does not have")
    return params[name]


def _fit(value: torch.Tensor, target: torch.Tensor, key: str, path: Path) -> None:
    if value.shape != target.shape:
        raise CheckpointError(f"{path}: {key} has shape {tuple(value.shape)}, the model {tuple(target.shape)}")
