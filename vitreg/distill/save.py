"""A trained student written as a delta to its base (:mod:`vitreg.models.load.delta`): the new registers and the changed
weights in fp16, the base's spec and the sha256 of its weights file, and the resulting architecture."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch.nn as nn

from vitreg.distill.student import Student
from vitreg.models.load.delta import DELTA_WEIGHTS, BaseModel, DeltaFile, delta_tensors, write_delta
from vitreg.models.presets import config_of


def base_sha256(spec: str, **load_args: Any) -> str:
    """The sha256 of the weights file ``spec`` loads (a zoo entry's recorded one, which every load checks)."""
    from vitreg.models.load import zoo
    from vitreg.models.load.checkpoints import resolve
    from vitreg.models.load.filecheck import sha256_file

    if spec.startswith(zoo.ZOO_PREFIX):
        return zoo.get(spec).sha256
    r = resolve(spec, **load_args)
    return sha256_file(r.weights) if r.weights is not None else ""


def save_student(student: Student, base: nn.Module, model: Any, out: Path, provenance: dict[str, Any]) -> int:
    """Write ``student`` as a delta to ``base`` (loaded from the ModelSpec ``model``) into ``out``; returns the
    size of delta.safetensors in bytes."""
    merged = student.merged()
    base_cfg = config_of(base)
    cfg = dataclasses.replace(
        base_cfg,
        registers=base_cfg.registers + student.registers,
        source=f"{base_cfg.source or base_cfg.spec}; {student.registers} registers distilled by vitreg "
        f"(teacher {provenance.get('teacher')}, unlocked: {student.unlock})",
    )
    tensors = delta_tensors(
        merged, {k: v.detach() for k, v in base.named_parameters()}, student.row_index(), student.first
    )
    size = model.img_size
    delta = DeltaFile(
        base=BaseModel(
            spec=model.spec,
            sha256=base_sha256(model.spec, weights=model.weights, download=False),
            img_size=[size, size] if isinstance(size, int) else list(size) if size else None,
        ),
        registers=student.registers,
        config=cfg.to_json(),
        unlocked=sorted({k.split(".", 1)[1] for k in tensors if "." in k and not k.startswith("index.")}),
        provenance=provenance,
    )
    write_delta(out, delta, tensors)
    return (out / DELTA_WEIGHTS).stat().st_size
