"""The ``transformers`` CLIP vision tower (``CLIPVisionModel``, ``CLIPVisionModelWithProjection``, the vision half of
``CLIPModel``): its config.json -> the timm ViT it is, and its keys -> timm's.

transformers' CLIP tower is timm's CLIP layout (``pre_norm``: a LayerNorm before the blocks, [CLS] inside the position
embedding, no patch-embedding bias) under other names. Its ``last_hidden_state`` is the last block's output *before*
``post_layernorm``, which transformers applies to [CLS] only (``pooler_output``); timm's ``norm`` is that same
LayerNorm applied to every token, so vitreg's pre-norm tokens are transformers' ``last_hidden_state`` and its [CLS]
after the final norm is ``pooler_output``. The projection to the joint embedding (``visual_projection``) is not part
of the tower and is not loaded.

The ONNX reader (:mod:`vitreg.models.onnx_clip`) produces this same layout from an exported graph.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from vitreg.errors import CheckpointError
from vitreg.models.presets import ModelConfig

#: model_type of the config.json files read here: a vision tower alone, or a whole CLIP (its ``vision_config``)
CLIP_TYPES = {"clip_vision_model": "CLIPVisionModel", "clip": "CLIPModel"}
#: transformers' CLIPImageProcessor defaults (OpenAI's statistics), used when no preprocessor_config.json says more
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}  # transformers' hidden_act -> ModelConfig.act

_LAYER = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.(.+)$")
_RENAME = {
    "layer_norm1.": "norm1.",
    "layer_norm2.": "norm2.",
    "self_attn.out_proj.": "attn.proj.",
    "mlp.fc1.": "mlp.fc1.",
    "mlp.fc2.": "mlp.fc2.",
}


def _tower_prefix(sd: dict[str, torch.Tensor]) -> str | None:
    """``vision_model.`` (CLIPModel, and files saved by transformers 4), ``""`` (a CLIPVisionModel saved by
    transformers 5), or None when ``sd`` is no CLIP vision tower."""
    for prefix in ("vision_model.", ""):
        if f"{prefix}embeddings.class_embedding" in sd and f"{prefix}pre_layrnorm.weight" in sd:
            return prefix
    return None


def is_hf_clip(sd: dict[str, torch.Tensor]) -> bool:
    return _tower_prefix(sd) is not None


def vision_section(cfg: dict[str, Any], where: Path | str) -> dict[str, Any]:
    """The vision tower's part of a config.json (``CLIPModel`` nests it under ``vision_config``)."""
    if cfg.get("model_type") == "clip":
        vision = cfg.get("vision_config")
        if not isinstance(vision, dict):
            raise CheckpointError(f"{where}: a CLIPModel config.json without a vision_config object")
        return vision
    return cfg


def clip_config(
    vision: dict[str, Any],
    where: Path | str,
    spec: str,
    source: str,
    preprocess: dict[str, Any] | None = None,
) -> ModelConfig:
    """A transformers ``CLIPVisionConfig`` (as a dict) -> the timm ViT it is. Every size must be in it: transformers'
    own defaults are not assumed (a config saved by transformers always writes them)."""
    try:
        dim, depth = int(vision["hidden_size"]), int(vision["num_hidden_layers"])
        heads, patch, size = int(vision["num_attention_heads"]), int(vision["patch_size"]), int(vision["image_size"])
        hidden, eps = int(vision["intermediate_size"]), float(vision["layer_norm_eps"])
        act = str(vision["hidden_act"])
    except KeyError as err:
        raise CheckpointError(f"{where}: the CLIP vision config lacks {err.args[0]!r}") from None
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: a CLIP vision config value is not a number ({err})") from None
    if act not in ACTIVATIONS:
        raise CheckpointError(f"{where}: hidden_act {act!r} is not supported ({', '.join(ACTIVATIONS)})")
    if min(dim, depth, heads, patch, size, hidden) < 1 or dim % heads or size % patch:
        raise CheckpointError(
            f"{where}: inconsistent CLIP vision sizes (hidden_size {dim}, heads {heads}, image {size}, patch {patch})"
        )
    mean, std = _preprocessing(preprocess or {})
    return ModelConfig(
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
        norm_eps=eps,
        act=ACTIVATIONS[act],
        mean=mean,
        std=std,
        source=source,
    )


RGB = tuple[float, float, float]


def _preprocessing(pre: dict[str, Any]) -> tuple[RGB, RGB]:
    mean, std = pre.get("image_mean"), pre.get("image_std")
    if isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3:
        return (float(mean[0]), float(mean[1]), float(mean[2])), (float(std[0]), float(std[1]), float(std[2]))
    return CLIP_MEAN, CLIP_STD


def convert_hf_clip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIP vision keys -> timm VisionTransformer keys (``pre_norm``, ``no_embed_class=False``): q/k/v
    fused into ``qkv``; the text tower and the projections of a whole ``CLIPModel`` are left out."""
    prefix = _tower_prefix(sd)
    if prefix is None:
        raise CheckpointError("not a transformers CLIP vision tower (no embeddings.class_embedding, pre_layrnorm)")
    sd = {"vision_model." + k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    emb = "vision_model.embeddings."
    cls = sd[emb + "class_embedding"]  # (C,)
    out: dict[str, torch.Tensor] = {
        "cls_token": cls.reshape(1, 1, -1),
        "pos_embed": sd[emb + "position_embedding.weight"].unsqueeze(0),  # (1, 1 + N, C): [CLS] first
        "patch_embed.proj.weight": sd[emb + "patch_embedding.weight"],  # (C, 3, p, p), no bias
        "norm_pre.weight": sd["vision_model.pre_layrnorm.weight"],
        "norm_pre.bias": sd["vision_model.pre_layrnorm.bias"],
        "norm.weight": sd["vision_model.post_layernorm.weight"],
        "norm.bias": sd["vision_model.post_layernorm.bias"],
    }
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, v in sd.items():
        m = _LAYER.match(key)
        if m is None:
            continue
        i, rest = int(m.group(1)), m.group(2)
        if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
            _, proj, param = rest.split(".")
            qkv.setdefault((i, param), {})[proj] = v
            continue
        for old, new in _RENAME.items():
            if rest.startswith(old):
                rest = new + rest[len(old) :]
                break
        out[f"blocks.{i}.{rest}"] = v
    for (i, param), parts in qkv.items():
        if set(parts) != {"q_proj", "k_proj", "v_proj"}:
            raise CheckpointError(f"layer {i}: the attention {param} lacks one of q_proj, k_proj, v_proj")
        out[f"blocks.{i}.attn.qkv.{param}"] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]], 0)
    return out
