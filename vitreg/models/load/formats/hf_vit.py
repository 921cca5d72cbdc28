"""A ``transformers`` ViT folder (``ViTModel``, ``ViTForImageClassification``): how google/vit and DINO (v1,
facebook/dino-*) are published, and DeiT without distillation.

- recognised by: ``config.json`` with ``model_type`` ``vit``; keys ``embeddings.patch_embeddings.projection`` +
  ``layernorm_before`` (DINOv2 names its norms ``norm1`` / ``norm2``), without a ``distillation_token`` (DeiT's);
- the architecture: every size in config.json, ``qkv_bias``, the eps (1e-12 as transformers writes it); the
  preprocessing from ``preprocessor_config.json``, else ViTImageProcessor's (0.5, 0.5);
- onto timm: the original ViT layout (``no_embed_class=False``: [CLS] has a position; a patch-embedding bias; no norm
  before the blocks); q/k/v fused. ``last_hidden_state`` is after the final ``layernorm``: vitreg's tokens after its
  final norm. The pooler (a tanh dense on [CLS]) and a classifier are not part of the backbone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitreg.errors import CheckpointError
from vitreg.models.load.formats.base import (
    HUB_WEIGHTS,
    Format,
    Layout,
    StateDict,
    ints,
    mean_std,
    preprocessor,
    strip_prefix,
    with_processor,
)
from vitreg.models.load.formats.hf_common import activation, architectures, bert_blocks, eps, sizes
from vitreg.models.load.formats.resampling import TRANSFORMERS
from vitreg.models.load.formats.timm_folder import timm_filter

if TYPE_CHECKING:
    import torch.nn as nn

    from vitreg.models.presets import ModelConfig

VIT_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # transformers' ViTImageProcessor defaults
ACTIVATIONS = {"gelu": "gelu"}


def backbone(sd: StateDict) -> StateDict:
    return strip_prefix(sd, "vit.", "deit.")  # *ForImageClassification wrap the backbone


def is_bert_vit(sd: StateDict) -> bool:
    sd = backbone(sd)
    return "embeddings.patch_embeddings.projection.weight" in sd and any(".layernorm_before." in k for k in sd)


def recognise(sd: StateDict) -> bool:
    return is_bert_vit(sd) and "embeddings.distillation_token" not in backbone(sd)


def vit_to_timm(sd: StateDict, model: nn.Module) -> StateDict:
    """ViT and DeiT keys -> timm's (DeiT's distillation token -> ``dist_token``, its position in ``pos_embed``)."""
    sd = backbone(sd)
    out: StateDict = {
        "cls_token": sd["embeddings.cls_token"],
        "pos_embed": sd["embeddings.position_embeddings"],  # (1, prefix + N, C): [CLS] (and DeiT's token) first
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
        **bert_blocks(sd),
    }
    if "embeddings.distillation_token" in sd:
        out["dist_token"] = sd["embeddings.distillation_token"]
    return timm_filter(out, model, TRANSFORMERS)


def vit_config(
    cfg: dict[str, Any], folder: Path, what: str, source: str, default_mean_std: Any, processor: str, **extra: Any
) -> ModelConfig:
    """A transformers ViT-style config.json (ViT, DeiT, ViTMAE) -> the timm ViT it is, prepared as its ``processor``
    class does (its preprocessor_config.json, else the class's defaults)."""
    from vitreg.models.presets import ModelConfig

    where = folder / "config.json"
    dim, depth, heads, hidden, patch = sizes(cfg, where, what)
    (size,) = ints(cfg, where, what, "image_size")
    if size % patch:
        raise CheckpointError(f"{where}: image_size {size} is not a multiple of patch_size {patch}")
    if int(cfg.get("num_channels", 3)) != 3:
        raise CheckpointError(f"{where}: num_channels {cfg.get('num_channels')} (vitreg reads RGB models)")
    pre = preprocessor(folder)
    mean, std = mean_std(pre, default_mean_std)
    out = ModelConfig(
        spec=f"hf:{folder.name}",
        img_size=(size, size),
        patch_size=patch,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=hidden / dim,
        init_values=None,
        qkv_bias=bool(cfg.get("qkv_bias", True)),
        no_embed_class=False,
        norm_eps=eps(cfg, where),
        act=activation(cfg, where, ACTIVATIONS),
        mean=mean,
        std=std,
        source=source,
        **extra,
    )
    return with_processor(out, pre, processor)


def read_config(cfg: dict[str, Any], folder: Path) -> ModelConfig:
    source = f"transformers {architectures(cfg, 'ViTModel')}"
    return vit_config(cfg, folder, "ViT", source, VIT_MEAN_STD, "ViTImageProcessor")


LAYOUT = Layout(name="transformers ViT", recognise=recognise, to_timm=vit_to_timm)

FORMAT = Format(
    key="hf-vit",
    preprocessing="its `preprocessor_config.json` (`ViTImageProcessor`: squashed, bilinear)",
    resampling=TRANSFORMERS.said,
    owner="transformers",
    what="a `transformers` ViT folder (`ViTModel`, `ViTForImageClassification`: google/vit, DINO v1 facebook/dino-*)",
    command="vitreg diagnose --model hf:facebook/dino-vitb16 --download --out runs/d",
    accepted="a transformers ViTModel folder",
    recognised_by="config.json model_type vit; keys embeddings.patch_embeddings.projection + layernorm_before, no "
    "distillation_token",
    states_architecture="config.json: sizes, qkv_bias, hidden_act, layer_norm_eps",
    order=36,
    config_file="config.json",
    model_types=("vit",),
    weight_files=HUB_WEIGHTS,
    read_config=read_config,
    layout=LAYOUT,
)
