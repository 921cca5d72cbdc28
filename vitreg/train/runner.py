"""From a config to run directories: one run, or a registers sweep (one sub-directory ``regN`` per value, same
seed and data), fresh (:func:`train`) or continued (:func:`resume`). Only rank 0 writes files."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from vitreg import distributed as dist
from vitreg.config import load_config, save_config
from vitreg.device import resolve_device
from vitreg.errors import ConfigError
from vitreg.models.presets import model_config
from vitreg.runlock import run_lock
from vitreg.train.checkpoint import STATE_NAME
from vitreg.train.config import TrainConfig, load_train_config
from vitreg.train.data import load_data
from vitreg.train.loop import RunResult, train_run

CONFIG_NAME = "config.yaml"


def run_dirs(cfg: TrainConfig, out: Path) -> list[tuple[int, Path]]:
    """(registers, directory) of each run: ``out`` itself for one value, ``out/regN`` for a sweep."""
    if len(cfg.registers) == 1:
        return [(cfg.registers[0], out)]
    return [(n, out / f"reg{n}") for n in cfg.registers]


def _occupied(directory: Path) -> bool:
    return (directory / STATE_NAME).is_file() or (directory / "model.safetensors").is_file()


def input_size(cfg: TrainConfig) -> tuple[int, int]:
    """The model's input size (H, W); an unknown model name is a ConfigError, before anything is rendered."""
    return model_config(cfg.model, img_size=cfg.img_size).img_size


def train(cfg: TrainConfig, out: str | Path) -> list[RunResult]:
    """Train ``cfg`` into ``out`` (``out/regN`` for a registers sweep); an occupied directory is refused, and so is
    one that another process is writing (:mod:`vitreg.runlock`)."""
    out = Path(out)
    input_size(cfg)  # an unknown model name fails before the directory is created for the lock
    with run_lock(out, "train"):
        busy = [str(d) for _, d in run_dirs(cfg, out) if _occupied(d)]
        if busy:
            raise ConfigError(
                f"{busy[0]} already holds a training run; continue it with --resume {out} or use a new --out"
            )
        return _run(cfg, out, resumed=False)


def resume(directory: str | Path, overrides: Sequence[str] = ()) -> list[RunResult]:
    """Continue the run(s) in ``directory`` from their last checkpoints (its config.yaml, plus ``overrides``)."""
    directory = Path(directory)
    saved = directory / CONFIG_NAME
    if not saved.is_file():
        raise ConfigError(f"{directory} has no {CONFIG_NAME}: not a vitreg training run")
    with run_lock(directory, "train --resume"):
        return _run(load_config(TrainConfig, saved, list(overrides)), directory, resumed=True)


def _run(cfg: TrainConfig, out: Path, resumed: bool) -> list[RunResult]:
    hw = input_size(cfg)
    if dist.is_main():
        save_config(cfg, out, CONFIG_NAME)
    # once for the whole sweep: every value sees the same images (device scenes render on the training device)
    device = "cpu" if cfg.data.kind != "device" else resolve_device(cfg.device)
    data = load_data(cfg.data, hw, device)
    results = []
    for n, directory in run_dirs(cfg, out):
        sub = dataclasses.replace(cfg, registers=[n])
        if directory != out and dist.is_main():
            save_config(sub, directory, CONFIG_NAME)
        results.append(train_run(sub, directory, resume=resumed, data=data))
    return results


def run_training(
    config: str | None = None, overrides: Sequence[str] = (), out: Path | None = None, resume_dir: Path | None = None
) -> list[RunResult]:
    """`vitreg train` in one call: a packaged name or YAML file plus ``key=value`` overrides into ``out``, or the
    run in ``resume_dir`` continued. Every key and value is checked before any work starts."""
    if resume_dir is not None:
        if out is not None and Path(out).resolve() != Path(resume_dir).resolve():
            raise ConfigError("--resume DIR continues DIR; give either --resume or --out, not two directories")
        if config is not None:
            raise ConfigError("--resume uses DIR/config.yaml; --config cannot be combined with it")
        return resume(resume_dir, overrides)
    if out is None:
        raise ConfigError("--out DIR is required (or --resume DIR)")
    return train(load_train_config(config, list(overrides)), out)
