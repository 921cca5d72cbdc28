"""DINOv2 as Meta published it: the hub names (``dinov2_vits14``, ``dinov2_vitl14_reg``, ...) and their original
``.pth`` files (``DinoVisionTransformer`` keys: ``mask_token``, ``register_tokens``, [CLS]'s own position, chunked
blocks ``blocks.<chunk>.<i>.``, SwiGLU ``mlp.w12`` / ``mlp.w3``).

- recognised by: the name; a state dict with ``mask_token`` or ``register_tokens`` (and no ``storage_tokens``, which
  are DINOv3's);
- the architecture: timm's DINOv2 model of that name (``vit_small_patch14_reg4_dinov2``, ...);
- onto timm: ``register_tokens`` -> ``reg_token``; DINOv2 adds ``pos_embed[:, 0]`` to [CLS], which timm's register
  layout (``no_embed_class``) folds into ``cls_token``; chunked blocks unchunked; ``w12`` / ``w3`` -> ``fc1`` /
  ``fc2`` (timm's SwiGLUPacked); then timm's filter.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from vitreg.models.load.formats.base import Format, Layout, StateDict
from vitreg.models.load.formats.resampling import DINOV2, DINOV2_REG
from vitreg.models.load.formats.timm_folder import timm_filter
from vitreg.models.processor import Processor

if TYPE_CHECKING:
    import torch.nn as nn

    from vitreg.models.presets import ModelConfig


def recognise(sd: StateDict) -> bool:
    return ("mask_token" in sd or "register_tokens" in sd) and "storage_tokens" not in sd


def convert(sd: StateDict, no_embed_class: bool = True) -> StateDict:
    """Original DINOv2 keys -> timm VisionTransformer keys."""
    sd = dict(sd)
    sd.pop("mask_token", None)
    out: StateDict = {}
    if "register_tokens" in sd:
        out["reg_token"] = sd.pop("register_tokens")
    pos = sd.pop("pos_embed")
    cls = sd.pop("cls_token")
    out["cls_token"] = cls + pos[:, :1] if no_embed_class else cls
    out["pos_embed"] = pos[:, 1:] if no_embed_class else pos
    for k, v in sd.items():
        k = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k)
        k = re.sub(r"\.mlp\.w12\.", ".mlp.fc1.", k)
        k = re.sub(r"\.mlp\.w3\.", ".mlp.fc2.", k)
        out[k] = v
    return out


def to_timm(sd: StateDict, model: nn.Module) -> StateDict:
    from timm.models.vision_transformer import VisionTransformer

    how = DINOV2_REG if "register_tokens" in sd or "reg_token" in sd else DINOV2  # its hub builders' flags
    if isinstance(model, VisionTransformer) and "pos_embed" in sd and "cls_token" in sd:
        sd = convert(sd, bool(getattr(model, "no_embed_class", True)))
    return timm_filter(sd, model, how)


EVAL_RESIZE, EVAL_CROP = 256, 224
EVAL_OWNER = "DINOv2's make_classification_eval_transform (Resize 256, CenterCrop 224)"


def _claims_name(spec: str) -> bool:
    from vitreg.models.presets import DINOV2_ALIASES

    return spec in DINOV2_ALIASES


def read_name(spec: str, *, registers: int | None, img_size: Any, overrides: dict[str, Any]) -> ModelConfig:
    """A DINOv2 hub name: timm's model of it, run as DINOv2's own evaluation prepares a photo
    (``make_classification_eval_transform``: the shorter side to 256, bicubic, the centre 224 cropped): at 224 px, the
    paper's setting, unless ``img_size`` says otherwise (the table, 518 px, is resampled DINOv2's way)."""
    from vitreg.models.presets import model_config

    cfg = model_config(spec, registers=registers, img_size=img_size or EVAL_CROP, **overrides)
    cfg.processor = Processor("shorter", EVAL_CROP / EVAL_RESIZE, "bicubic", "int", "round", EVAL_OWNER)
    return cfg


LAYOUT = Layout(name="DINOv2 original", recognise=recognise, to_timm=to_timm)

FORMAT = Format(
    key="dinov2",
    preprocessing="DINOv2's eval transform: shorter side to 256, the centre 224 (bicubic); runs at 224",
    resampling=f"{DINOV2.said}; with registers: {DINOV2_REG.said}",
    owner="dinov2",
    what="an original DINOv2 `.pth` (found in torch hub's `checkpoints/`; `--download` fetches it)",
    command="vitreg diagnose --model dinov2_vitl14_reg --weights dinov2_vitl14_reg4_pretrain.pth --out runs/d",
    accepted="a DINOv2 name (dinov2_vits14, dinov2_vitl14_reg, ...) with its original .pth",
    recognised_by="the hub name; keys mask_token / register_tokens",
    states_architecture="timm's DINOv2 model of the name",
    order=20,
    claims_name=_claims_name,
    read_name=read_name,
    name_options=True,
    layout=LAYOUT,
)
