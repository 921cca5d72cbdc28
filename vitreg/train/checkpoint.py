"""Training checkpoints: one safetensors file holding weights, optimiser tensors and RNG states, with the rest
(step, scheduler, optimiser hyper-parameters, Python/numpy RNG scalars) as JSON in its metadata.

One file means one atomic rename: the file on disk is always a complete checkpoint, whenever the process dies
(write to a temporary name, fsync, rename, fsync the directory). Loading never unpickles anything.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from vitreg import atomic
from vitreg.errors import CheckpointError, OutputError
from vitreg.models.load.checkpoints import save_model
from vitreg.models.load.filecheck import check_safetensors_header

STATE_NAME = "train_state.safetensors"
FORMAT = "vitreg-train-state-1"


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = np.random.get_state(legacy=True)  # the tuple form (numpy's stubs type the call without legacy as a dict)
    assert isinstance(state, tuple)  # legacy=True gives the tuple for the global MT19937 generator
    np_kind, np_keys, np_pos, np_gauss, np_cached = state
    py_version, py_state, py_gauss = random.getstate()
    tensors = {"rng.torch": torch.random.get_rng_state(), "rng.numpy": torch.from_numpy(np_keys.astype(np.int64))}
    meta = dict(
        numpy=[np_kind, int(np_pos), int(np_gauss), float(np_cached)], python=[py_version, list(py_state), py_gauss]
    )
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.random.set_rng_state(tensors["rng.torch"])
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))


def save_train_state(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    step: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Atomically write DIR/train_state.safetensors for the state after ``step`` optimiser updates."""
    tensors: dict[str, torch.Tensor] = {
        f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()
    }
    opt = optimizer.state_dict()
    opt_scalars: dict[str, dict[str, Any]] = {}
    for pid, state in opt["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous().clone()
            else:
                opt_scalars.setdefault(str(pid), {})[key] = value
    groups = []
    for i, group in enumerate(opt["param_groups"]):
        plain = {}
        for key, value in group.items():
            if isinstance(value, torch.Tensor):  # e.g. timm Lamb keeps its step count in the group
                tensors[f"optim_group.{i}.{key}"] = value.detach().cpu().contiguous().clone()
            else:
                plain[key] = value
        groups.append(plain)
    rng_tensors, rng_meta = rng_state()
    tensors.update(rng_tensors)
    meta = dict(
        format=FORMAT,
        step=int(step),
        optimizer=dict(param_groups=groups, scalars=opt_scalars),
        scheduler=scheduler.state_dict() if scheduler is not None else None,
        rng=rng_meta,
        extra=extra or {},
    )
    atomic.make_dirs(directory)
    path = directory / STATE_NAME
    atomic.write_safetensors(path, tensors, metadata={"state": json.dumps(meta)})
    return path


def read_train_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not path.is_file():
        raise CheckpointError(f"no training checkpoint at {path}")
    check_safetensors_header(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("state", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{path}: unreadable training checkpoint ({' '.join(str(err).split())[:300]})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path}: not a vitreg training checkpoint (format {found!r})")
    return tensors, meta


def load_train_state(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore model, optimiser, scheduler and RNG from ``path``; returns the metadata (``step``, ``extra``)."""
    tensors, meta = read_train_state(path)
    try:
        meta["step"] = _step(meta["step"])
        _restore(path, tensors, meta, model, optimizer, scheduler)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as err:
        # the right format name over contents that do not fit (damaged, edited or from another vitreg)
        detail = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(f"{path}: damaged training checkpoint ({type(err).__name__}: {detail})") from None
    return meta


def _step(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"step must be a non-negative integer, got {value!r}")
    return value


def _restore(
    path: Path,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> None:
    sd = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, key = k.split(".", 2)
            state.setdefault(int(pid), {})[key] = v
    for pid, scalars in meta["optimizer"]["scalars"].items():
        state.setdefault(int(pid), {}).update(scalars)
    groups = meta["optimizer"]["param_groups"]
    for group in groups:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])  # JSON turned the tuple into a list
    for k, v in tensors.items():
        if k.startswith("optim_group."):
            _, i, key = k.split(".", 2)
            groups[int(i)][key] = v
    optimizer.load_state_dict(dict(state=state, param_groups=groups))
    if scheduler is not None and meta.get("scheduler") is not None:
        scheduler.load_state_dict(meta["scheduler"])
    set_rng_state(tensors, meta["rng"])


def keep_model(model: torch.nn.Module, directory: Path) -> Path:
    """A loadable model directory (model.json + model.safetensors), written beside and renamed into place."""
    tmp = directory.with_name(f".{directory.name}.tmp{os.getpid()}")
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        save_model(model, tmp)
        if directory.exists():  # left by a run that died after writing it: same step, same weights
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except OSError as err:
        raise OutputError(f"cannot write {directory}: {err.strerror or err}") from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    atomic.fsync_dir(directory.parent)
    return directory
