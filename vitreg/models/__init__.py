"""Models: timm VisionTransformers with N register tokens, checkpoint loading, and the Inspector."""

from vitreg.models.checkpoints import CheckpointError, WeightsNotFoundError, load_model, save_model
from vitreg.models.inspect import Capture, Inspector, TokenSplit, split_tokens, token_layout
from vitreg.models.presets import PRESETS, ModelConfig, create_model, describe_presets, model_config

__all__ = [
    "PRESETS",
    "Capture",
    "CheckpointError",
    "Inspector",
    "ModelConfig",
    "TokenSplit",
    "WeightsNotFoundError",
    "create_model",
    "describe_presets",
    "load_model",
    "model_config",
    "save_model",
    "split_tokens",
    "token_layout",
]
