"""A ``transformers`` SigLIP 2 vision tower (``Siglip2VisionModel``, or a ``Siglip2Model``'s vision half), on square
images.

SigLIP 2 ("NaFlex") takes patchified images of any aspect ratio: its patch embedding is a Linear over flattened
``(patch, patch, channel)`` pixels, and its position table (a square grid of ``num_patches``) is resized per image
(bilinear, antialiased). vitreg reads it at the table's own grid, ``sqrt(num_patches) * patch_size`` pixels square,
where that resize is the identity; at another square size vitreg resizes the table as SigLIP 2 does (bilinear,
antialiased: ``resampling.TRANSFORMERS_SIGLIP2``), once when the weights are loaded.

- recognised by: ``config.json`` with ``model_type`` ``siglip2_vision_model`` / ``siglip2``; keys as SigLIP's with
  a 2-D ``embeddings.patch_embedding.weight``;
- the architecture: as SigLIP's, the image size from ``num_patches`` (a square number);
- onto timm: SigLIP's layout, the Linear patch embedding reshaped into timm's convolution
  (``(C, p*p*3) -> (C, 3, p, p)``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitreg.errors import CheckpointError
from vitreg.models.load.formats.base import HUB_WEIGHTS, Format, Layout, StateDict, ints, preprocessor
from vitreg.models.load.formats.hf_common import architectures, sizes, vision_config
from vitreg.models.load.formats.hf_siglip import _recognise, siglip_config, tower, tower_to_timm
from vitreg.models.load.formats.resampling import TRANSFORMERS_SIGLIP2
from vitreg.models.load.formats.timm_folder import timm_filter

if TYPE_CHECKING:
    import torch.nn as nn

    from vitreg.models.presets import ModelConfig

TYPES = {"siglip2_vision_model": "Siglip2VisionModel", "siglip2": "Siglip2Model"}


def recognise(sd: StateDict) -> bool:
    return _recognise(sd, 2)


def to_timm(sd: StateDict, model: nn.Module) -> StateDict:
    sd = tower(sd)
    w = sd["embeddings.patch_embedding.weight"]  # (C, p * p * 3), pixels in (row, column, channel) order
    p = math.isqrt(w.shape[1] // 3)
    conv = w.reshape(w.shape[0], p, p, 3).permute(0, 3, 1, 2).contiguous()  # (C, 3, p, p)
    return timm_filter(tower_to_timm(sd, conv), model, TRANSFORMERS_SIGLIP2)


def read_config(cfg: dict[str, Any], folder: Path) -> ModelConfig:
    where = folder / "config.json"
    vision = vision_config(cfg, where, "siglip2")
    (n,) = ints(vision, where, "SigLIP 2 vision", "num_patches")
    side = math.isqrt(n)
    if side * side != n:
        raise CheckpointError(f"{where}: num_patches {n} is not a square grid")
    patch = sizes(vision, where, "SigLIP 2 vision")[4]
    kind = architectures(cfg, TYPES[str(cfg["model_type"])])
    source = f"transformers {kind} (its position grid: {side}x{side} patches)"
    return siglip_config(
        vision, where, f"hf:{folder.name}", source, side * patch, preprocessor(folder), "Siglip2ImageProcessor"
    )


LAYOUT = Layout(name="transformers SigLIP 2", recognise=recognise, to_timm=to_timm)

FORMAT = Format(
    key="hf-siglip2",
    preprocessing="vitreg's squash (its processor's patch budget is not a size)",
    resampling=TRANSFORMERS_SIGLIP2.said,
    owner="transformers",
    what="a `transformers` SigLIP 2 folder (`Siglip2VisionModel`, NaFlex), square images (by default at its position "
    "grid's size: `sqrt(num_patches) * patch_size` pixels)",
    command="vitreg diagnose --model hf:google/siglip2-base-patch16-naflex --download --out runs/d",
    accepted="a transformers Siglip2VisionModel / Siglip2Model folder",
    recognised_by="config.json model_type siglip2_vision_model / siglip2; a 2-D embeddings.patch_embedding.weight",
    states_architecture="config.json (a Siglip2Model's vision_config): sizes, num_patches, hidden_act, eps",
    order=35,
    config_file="config.json",
    model_types=tuple(TYPES),
    weight_files=HUB_WEIGHTS,
    read_config=read_config,
    layout=LAYOUT,
)
