"""A ``transformers`` CLIP vision tower (``CLIPVisionModel``, ``CLIPVisionModelWithProjection``, the vision half of a
``CLIPModel``, as LLaVA uses it): ``config.json`` + ``model.safetensors``.

- recognised by: ``config.json`` with ``model_type`` ``clip_vision_model`` / ``clip``; keys
  ``embeddings.class_embedding`` + ``pre_layrnorm`` (under ``vision_model.`` in a CLIPModel and in files saved by
  transformers 4);
- the architecture: every size in config.json (a CLIPModel's ``vision_config``), the activation (QuickGELU for
  OpenAI's weights) and the eps; the preprocessing from ``preprocessor_config.json``, else CLIP's;
- onto timm: transformers' CLIP tower is timm's CLIP layout (``pre_norm``: a LayerNorm before the blocks, [CLS] inside
  the position embedding, no patch-embedding bias) under other names. Its ``last_hidden_state`` is the last block's
  output *before* ``post_layernorm``, which transformers applies to [CLS] only (``pooler_output``); timm's ``norm``
  is that same LayerNorm applied to every token, so vitreg's pre-norm tokens are transformers'
  ``last_hidden_state`` and its [CLS] after the final norm is ``pooler_output``. The projection to the joint
  embedding (``visual_projection``) is not part of the tower and is not loaded.

The ONNX reader (:mod:`vitreg.models.load.formats.onnx_clip`) produces this same layout from an exported graph.
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
    with_processor,
)
from vitreg.models.load.formats.hf_common import activation, architectures, clip_blocks, eps, sizes, vision_config
from vitreg.models.load.formats.resampling import TRANSFORMERS
from vitreg.models.load.formats.timm_folder import timm_filter

if TYPE_CHECKING:
    import torch.nn as nn

    from vitreg.models.presets import ModelConfig

#: model_type of the config.json files read here: a vision tower alone, or a whole CLIP (its ``vision_config``)
TYPES = {"clip_vision_model": "CLIPVisionModel", "clip": "CLIPModel"}
#: transformers' CLIPImageProcessor defaults (OpenAI's statistics), used when no preprocessor_config.json says more
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}  # transformers' hidden_act -> ModelConfig.act


def _tower_prefix(sd: StateDict) -> str | None:
    """``vision_model.`` (CLIPModel, and files saved by transformers 4), ``""`` (a CLIPVisionModel saved by
    transformers 5), or None when ``sd`` is no CLIP vision tower."""
    for prefix in ("vision_model.", ""):
        if f"{prefix}embeddings.class_embedding" in sd and f"{prefix}pre_layrnorm.weight" in sd:
            return prefix
    return None


def recognise(sd: StateDict) -> bool:
    return _tower_prefix(sd) is not None


def to_timm(sd: StateDict, model: nn.Module) -> StateDict:
    """transformers CLIP vision keys -> timm VisionTransformer keys (``pre_norm``, ``no_embed_class=False``): q/k/v
    fused into ``qkv``; the text tower and the projections of a whole ``CLIPModel`` are left out."""
    prefix = _tower_prefix(sd)
    if prefix is None:
        raise CheckpointError("not a transformers CLIP vision tower (no embeddings.class_embedding, pre_layrnorm)")
    sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    out: StateDict = {
        "cls_token": sd["embeddings.class_embedding"].reshape(1, 1, -1),
        "pos_embed": sd["embeddings.position_embedding.weight"].unsqueeze(0),  # (1, 1 + N, C): [CLS] first
        "patch_embed.proj.weight": sd["embeddings.patch_embedding.weight"],  # (C, 3, p, p), no bias
        "norm_pre.weight": sd["pre_layrnorm.weight"],
        "norm_pre.bias": sd["pre_layrnorm.bias"],
        "norm.weight": sd["post_layernorm.weight"],
        "norm.bias": sd["post_layernorm.bias"],
    }
    out |= clip_blocks(sd)
    return timm_filter(out, model, TRANSFORMERS)


def clip_config(
    vision: dict[str, Any], where: Path | str, spec: str, source: str, preprocess: dict[str, Any] | None = None
) -> ModelConfig:
    """A transformers ``CLIPVisionConfig`` (as a dict) -> the timm ViT it is. Every size must be in it: transformers'
    own defaults are not assumed (a config saved by transformers always writes them)."""
    from vitreg.models.presets import ModelConfig

    dim, depth, heads, hidden, patch = sizes(vision, where, "CLIP vision")
    (size,) = ints(vision, where, "CLIP vision", "image_size")
    if size % patch:
        raise CheckpointError(f"{where}: image_size {size} is not a multiple of patch_size {patch}")
    mean, std = mean_std(preprocess or {}, (CLIP_MEAN, CLIP_STD))
    cfg = ModelConfig(
        spec=spec,
        img_size=(size, size),
        patch_size=patch,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=hidden / dim,
        init_values=None,
        pre_norm=True,
        no_embed_class=False,
        norm_eps=eps(vision, where),
        act=activation(vision, where, ACTIVATIONS),
        mean=mean,
        std=std,
        source=source,
    )
    return with_processor(cfg, preprocess or {}, "CLIPImageProcessor")


def read_config(cfg: dict[str, Any], folder: Path) -> ModelConfig:
    """A transformers CLIP config.json (a vision tower, or a whole CLIPModel's ``vision_config``) -> its timm ViT."""
    where = folder / "config.json"
    kind = architectures(cfg, TYPES[str(cfg["model_type"])])
    kind = kind if kind.startswith("CLIP") else TYPES[str(cfg["model_type"])]
    vision = vision_config(cfg, where, "clip")
    return clip_config(vision, where, f"hf:{folder.name}", f"transformers {kind}", preprocessor(folder))


LAYOUT = Layout(name="transformers CLIP", recognise=recognise, to_timm=to_timm)

FORMAT = Format(
    key="hf-clip",
    preprocessing="its `preprocessor_config.json` (`CLIPImageProcessor`: shorter side, centre crop, bicubic)",
    resampling=TRANSFORMERS.said,
    owner="transformers",
    what="a `transformers` CLIP folder (`CLIPVisionModel`, `CLIPVisionModelWithProjection`, or a `CLIPModel`'s "
    "vision tower, as LLaVA uses it: `config.json` + `model.safetensors`), or its Hub repo",
    command="vitreg lost --model hf:openai/clip-vit-base-patch16 --download --features k --dataset COCO.json "
    "--out runs/l",
    accepted="a transformers CLIPVisionModel / CLIPModel folder",
    recognised_by="config.json model_type clip_vision_model / clip; keys embeddings.class_embedding + pre_layrnorm",
    states_architecture="config.json (a CLIPModel's vision_config): sizes, hidden_act, layer_norm_eps",
    order=32,
    config_file="config.json",
    model_types=tuple(TYPES),
    weight_files=HUB_WEIGHTS,
    read_config=read_config,
    layout=LAYOUT,
)
