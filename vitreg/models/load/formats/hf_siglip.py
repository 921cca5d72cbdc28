"""A ``transformers`` SigLIP vision tower (``SiglipVisionModel``, or a ``SiglipModel``'s vision half): ``config.json``
+ ``model.safetensors``. SigLIP has no [CLS]: its image embedding is an attention-pooling head over the patches.

- recognised by: ``config.json`` with ``model_type`` ``siglip_vision_model`` / ``siglip``; keys
  ``embeddings.patch_embedding.weight`` (a convolution) + ``post_layernorm`` without CLIP's ``class_embedding``;
- the architecture: every size in config.json (a SiglipModel's ``vision_config``), the activation (tanh-approximated
  GELU) and the eps; whether it has its pooling head (``vision_use_head``); the preprocessing from
  ``preprocessor_config.json``, else SigLIP's (0.5, 0.5);
- onto timm: timm's SigLIP layout (``class_token=False``, position embedding of the patches only, ``global_pool='map'``
  with the head in ``attn_pool``: its probe is the latent, the ``in_proj`` of its MultiheadAttention splits into
  ``q`` and ``kv``). ``last_hidden_state`` is after ``post_layernorm``: vitreg's tokens after its final norm; the
  head's output (``pooler_output``) is the model's output.
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
from vitreg.models.load.formats.hf_common import activation, architectures, clip_blocks, eps, sizes, vision_config
from vitreg.models.load.formats.resampling import TRANSFORMERS
from vitreg.models.load.formats.timm_folder import timm_filter

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from vitreg.models.presets import ModelConfig

TYPES = {"siglip_vision_model": "SiglipVisionModel", "siglip": "SiglipModel"}
SIGLIP_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


def tower(sd: StateDict) -> StateDict:
    """The vision tower's keys without their prefix (``vision_model.`` in a SiglipModel and in files of transformers
    4, none in a SiglipVisionModel saved by transformers 5)."""
    return strip_prefix(sd, "vision_model.")


def _recognise(sd: StateDict, ndim: int) -> bool:
    sd = tower(sd)
    w = sd.get("embeddings.patch_embedding.weight")
    return w is not None and w.ndim == ndim and "post_layernorm.weight" in sd and "embeddings.class_embedding" not in sd


def recognise(sd: StateDict) -> bool:
    return _recognise(sd, 4)


def head_to_timm(sd: StateDict) -> StateDict:
    """transformers' ``SiglipMultiheadAttentionPoolingHead`` -> timm's ``AttentionPoolLatent`` (``attn_pool``)."""
    if "head.probe" not in sd:
        return {}
    w, b = sd["head.attention.in_proj_weight"], sd["head.attention.in_proj_bias"]  # (3C, C): q, k, v
    c = w.shape[1]
    out = {
        "attn_pool.latent": sd["head.probe"],
        "attn_pool.q.weight": w[:c],
        "attn_pool.q.bias": b[:c],
        "attn_pool.kv.weight": w[c:],
        "attn_pool.kv.bias": b[c:],
    }
    for ours, theirs in (("proj", "attention.out_proj"), ("norm", "layernorm"), ("mlp.fc1", "mlp.fc1"),
                         ("mlp.fc2", "mlp.fc2")):  # fmt: skip
        for p in ("weight", "bias"):
            out[f"attn_pool.{ours}.{p}"] = sd[f"head.{theirs}.{p}"]
    return out


def tower_to_timm(sd: StateDict, patch_weight: torch.Tensor) -> StateDict:
    return {
        "patch_embed.proj.weight": patch_weight,
        "patch_embed.proj.bias": sd["embeddings.patch_embedding.bias"],
        "pos_embed": sd["embeddings.position_embedding.weight"].unsqueeze(0),  # (1, N, C): patches only
        "norm.weight": sd["post_layernorm.weight"],
        "norm.bias": sd["post_layernorm.bias"],
        **clip_blocks(sd),
        **head_to_timm(sd),
    }


def to_timm(sd: StateDict, model: nn.Module) -> StateDict:
    sd = tower(sd)
    return timm_filter(tower_to_timm(sd, sd["embeddings.patch_embedding.weight"]), model, TRANSFORMERS)


def siglip_config(
    vision: dict[str, Any],
    where: Path | str,
    spec: str,
    source: str,
    size: int,
    pre: dict[str, Any],
    processor: str = "SiglipImageProcessor",
) -> ModelConfig:
    from vitreg.models.presets import ModelConfig

    dim, depth, heads, hidden, patch = sizes(vision, where, "SigLIP vision")
    if size % patch:
        raise CheckpointError(f"{where}: image_size {size} is not a multiple of patch_size {patch}")
    mean, std = mean_std(pre, SIGLIP_MEAN_STD)
    out = ModelConfig(
        spec=spec,
        img_size=(size, size),
        patch_size=patch,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=hidden / dim,
        init_values=None,
        class_token=False,
        global_pool="map" if vision.get("vision_use_head", True) else "avg",
        no_embed_class=False,
        norm_eps=eps(vision, where),
        act=activation(vision, where, ACTIVATIONS),
        mean=mean,
        std=std,
        source=source,
    )
    return with_processor(out, pre, processor)


def read_config(cfg: dict[str, Any], folder: Path) -> ModelConfig:
    where = folder / "config.json"
    vision = vision_config(cfg, where, "siglip")
    (size,) = ints(vision, where, "SigLIP vision", "image_size")
    kind = architectures(cfg, TYPES[str(cfg["model_type"])])
    return siglip_config(vision, where, f"hf:{folder.name}", f"transformers {kind}", size, preprocessor(folder))


LAYOUT = Layout(name="transformers SigLIP", recognise=recognise, to_timm=to_timm)

FORMAT = Format(
    key="hf-siglip",
    preprocessing="its `preprocessor_config.json` (`SiglipImageProcessor`: squashed, bicubic)",
    resampling=TRANSFORMERS.said,
    owner="transformers",
    what="a `transformers` SigLIP folder (`SiglipVisionModel` or a `SiglipModel`'s vision tower; no [CLS]: the "
    "attention-pooling head is loaded as timm's `attn_pool`)",
    command="vitreg diagnose --model hf:google/siglip-base-patch16-224 --download --out runs/d",
    accepted="a transformers SiglipVisionModel / SiglipModel folder",
    recognised_by="config.json model_type siglip_vision_model / siglip; keys embeddings.patch_embedding (a "
    "convolution) + post_layernorm, no class_embedding",
    states_architecture="config.json (a SiglipModel's vision_config): sizes, hidden_act, eps, vision_use_head",
    order=34,
    config_file="config.json",
    model_types=tuple(TYPES),
    weight_files=HUB_WEIGHTS,
    read_config=read_config,
    layout=LAYOUT,
)
