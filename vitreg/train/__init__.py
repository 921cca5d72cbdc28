"""Training ViTs with 0-16 registers (DeiT-III recipe), norm tracking, exact resume, DDP under torchrun.

Exports are loaded on first use (see :mod:`vitreg._lazy`): ``vitreg.train.config`` imports without torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vitreg._lazy import lazy_exports

if TYPE_CHECKING:
    from vitreg.errors import TrainingDiverged
    from vitreg.train.config import DataConfig, TrainConfig, load_train_config, packaged_configs
    from vitreg.train.loop import RunResult, train_run
    from vitreg.train.runner import run_training

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "config": "DataConfig TrainConfig load_train_config packaged_configs",
        "loop": "RunResult train_run",
        "runner": "run_training",
        "vitreg.errors": "TrainingDiverged",
    },
)
