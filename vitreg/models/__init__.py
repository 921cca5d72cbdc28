"""Models: timm VisionTransformers with N register tokens, checkpoint loading, and the Inspector.

Exports are loaded on first use (see :mod:`vitreg._lazy`): importing this package does not import torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vitreg._lazy import lazy_exports

if TYPE_CHECKING:
    from vitreg.errors import CheckpointError, WeightsNotFoundError
    from vitreg.models.inspect import Capture, Inspector, TokenSplit, split_tokens, token_layout
    from vitreg.models.load.checkpoints import load_model, save_model
    from vitreg.models.presets import PRESETS, ModelConfig, create_model, describe_presets, model_config

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "vitreg.models.load.checkpoints": "load_model save_model",
        "inspect": "Capture Inspector TokenSplit split_tokens token_layout",
        "presets": "ModelConfig PRESETS create_model describe_presets model_config",
        "vitreg.errors": "CheckpointError WeightsNotFoundError",
    },
)
