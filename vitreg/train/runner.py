"""From a config to run directories: one run, or a registers sweep (one sub-directory ``regN`` per value, same
seed and data), fresh or resumed. Only rank 0 writes files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from vitreg import distributed as dist
from vitreg.config import ConfigError, load_config, save_config
from vitreg.models import model_config
from vitreg.train.checkpoint import STATE_NAME
from vitreg.train.config import TrainConfig, load_train_config
from vitreg.train.data import load_data, scene_config
from vitreg.train.loop import RunResult, train_run

CONFIG_NAME = "config.yaml"


def run_dirs(cfg: TrainConfig, out: Path) -> list[tuple[int, Path]]:
    """(registers, directory) of each run: ``out`` itself for one value, ``out/regN`` for a sweep."""
    if len(cfg.registers) == 1:
        return [(cfg.registers[0], out)]
    return [(n, out / f"reg{n}") for n in cfg.registers]


def _occupied(directory: Path) -> bool:
    return (directory / STATE_NAME).is_file() or (directory / "model.safetensors").is_file()


def resolve(
    config: str | None, overrides: list[str], out: Path | None, resume: Path | None
) -> tuple[TrainConfig, Path]:
    """The config and run directory, checked before any work starts (bad keys, bad values, occupied --out)."""
    if resume is not None:
        if out is not None and Path(out).resolve() != Path(resume).resolve():
            raise ConfigError("--resume DIR continues DIR; give either --resume or --out, not two directories")
        if config is not None:
            raise ConfigError("--resume uses DIR/config.yaml; --config cannot be combined with it")
        saved = Path(resume) / CONFIG_NAME
        if not saved.is_file():
            raise FileNotFoundError(f"{resume} has no {CONFIG_NAME}: not a vitreg training run")
        cfg = load_config(TrainConfig, saved, overrides)
        out = Path(resume)
    else:
        if out is None:
            raise ConfigError("--out DIR is required (or --resume DIR)")
        cfg = load_train_config(config, overrides)
        busy = [str(d) for _, d in run_dirs(cfg, Path(out)) if _occupied(d)]
        if busy:
            raise ConfigError(
                f"{busy[0]} already holds a training run; continue it with --resume {out} or use a new --out"
            )
    try:  # model and scene options are checked here too, so a typo fails before anything is rendered
        hw = model_config(cfg.model, img_size=cfg.img_size).img_size
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if cfg.data.kind == "synthetic":
        scene_config(cfg.data, hw)
    return cfg, Path(out)


def run_training(
    config: str | None = None, overrides: list[str] | None = None, out: Path | None = None, resume: Path | None = None
) -> list[RunResult]:
    cfg, out = resolve(config, overrides or [], out, resume)
    hw = model_config(cfg.model, img_size=cfg.img_size).img_size
    if dist.is_main():
        save_config(cfg, out, CONFIG_NAME)
    data = load_data(cfg.data, hw)  # once for the whole sweep: every value sees the same images
    results = []
    for n, directory in run_dirs(cfg, out):
        sub = dataclasses.replace(cfg, registers=[n])
        if directory != out and dist.is_main():
            save_config(sub, directory, CONFIG_NAME)
        results.append(train_run(sub, directory, resume=resume is not None, data=data))
    return results


def read_run_config(directory: Path) -> dict:
    return yaml.safe_load((directory / CONFIG_NAME).read_text())
