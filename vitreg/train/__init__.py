"""Training ViTs with 0-16 registers (DeiT-III recipe), norm tracking, exact resume, DDP under torchrun."""

from vitreg.train.config import DataConfig, TrainConfig, load_train_config, packaged_configs
from vitreg.train.loop import RunResult, TrainingDiverged, train_run
from vitreg.train.runner import run_training

__all__ = [
    "DataConfig",
    "RunResult",
    "TrainConfig",
    "TrainingDiverged",
    "load_train_config",
    "packaged_configs",
    "run_training",
    "train_run",
]
