"""A ``transformers`` DINOv2 folder (``Dinov2Model``, ``Dinov2WithRegistersModel``, and the backbone of their
``*ForImageClassification``): ``config.json`` + ``model.safetensors`` (or ``pytorch_model.bin``).

- recognised by: ``config.json`` with ``model_type`` ``dinov2`` / ``dinov2_with_registers``; keys
  ``embeddings.mask_token`` and ``encoder.layer.N.layer_scale1.lambda1`` (ViT and DeiT have neither);
- the architecture: every size is in config.json (width, depth, heads, patch, image size, LayerScale, SwiGLU, eps,
  registers); the preprocessing from ``preprocessor_config.json``;
- onto timm: DINOv2's layout in timm (``vit_*_dinov2``): [CLS]'s position folded into ``cls_token``
  (``no_embed_class``), registers -> ``reg_token``, q/k/v fused. ``last_hidden_state`` is after the final
  ``layernorm``: vitreg's tokens after its final norm.
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
    number,
    preprocessor,
    strip_prefix,
    with_processor,
)
from vitreg.models.load.formats.hf_common import bert_blocks
from vitreg.models.load.formats.resampling import TRANSFORMERS, TRANSFORMERS_DINOV2_REG
from vitreg.models.load.formats.timm_folder import timm_filter

if TYPE_CHECKING:
    import torch.nn as nn

    from vitreg.models.presets import ModelConfig

TYPES = {"dinov2": "Dinov2Model", "dinov2_with_registers": "Dinov2WithRegistersModel"}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def recognise(sd: StateDict) -> bool:
    sd = strip_prefix(sd, "dinov2.")
    return "embeddings.mask_token" in sd and any(".layer_scale1.lambda1" in k and k.startswith("encoder.") for k in sd)


def to_timm(sd: StateDict, model: nn.Module) -> StateDict:
    sd = strip_prefix(sd, "dinov2.")  # Dinov2For* heads wrap the backbone
    no_embed_class = bool(getattr(model, "no_embed_class", True))
    pos = sd["embeddings.position_embeddings"]  # (1, 1 + N, C)
    cls = sd["embeddings.cls_token"]  # (1, 1, C)
    out: StateDict = {
        "cls_token": cls + pos[:, :1] if no_embed_class else cls,
        "pos_embed": pos[:, 1:] if no_embed_class else pos,
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
    }
    if "embeddings.register_tokens" in sd:
        out["reg_token"] = sd["embeddings.register_tokens"]
    out |= bert_blocks(sd)
    return timm_filter(out, model, TRANSFORMERS_DINOV2_REG if "reg_token" in out else TRANSFORMERS)


def read_config(cfg: dict[str, Any], folder: Path) -> ModelConfig:
    """A transformers DINOv2 config.json -> the timm ViT it is (every size is in the file)."""
    from vitreg.models.presets import ModelConfig

    where = folder / "config.json"
    dim, depth, heads, patch, size = ints(
        cfg, where, "DINOv2", "hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size", "image_size"
    )
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{where}: hidden_act {cfg.get('hidden_act')!r} is not supported (gelu only)")
    swiglu = bool(cfg.get("use_swiglu_ffn", False))
    hidden = int(dim * number(cfg, where, "mlp_ratio", 4))
    if swiglu:  # transformers' Dinov2SwiGLUFFN: 2/3 of the width, rounded up to a multiple of 8, packed as two halves
        hidden = 2 * ((int(hidden * 2 / 3) + 7) // 8 * 8)
    pre = preprocessor(folder)
    mean, std = mean_std(pre, IMAGENET)
    out = ModelConfig(
        spec=f"hf:{folder.name}",
        registers=int(number(cfg, where, "num_register_tokens", 0)),
        img_size=(size, size),
        patch_size=patch,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=hidden / dim,
        mlp="swiglu" if swiglu else "mlp",
        init_values=number(cfg, where, "layerscale_value", 1.0),
        qkv_bias=bool(cfg.get("qkv_bias", True)),
        norm_eps=number(cfg, where, "layer_norm_eps", 1e-6),
        mean=mean,
        std=std,
        source=f"transformers {TYPES[str(cfg['model_type'])]}",
    )
    return with_processor(out, pre, "BitImageProcessor")  # facebook/dinov2-*: 518 px table, 224 px crop


LAYOUT = Layout(name="transformers DINOv2", recognise=recognise, to_timm=to_timm)

FORMAT = Format(
    key="hf-dinov2",
    preprocessing="its `preprocessor_config.json` (`BitImageProcessor`: shorter side to 256, the centre 224); "
    "runs at the crop",
    resampling=f"{TRANSFORMERS.said}; with registers: {TRANSFORMERS_DINOV2_REG.said}",
    owner="transformers",
    what="a `transformers` DINOv2 folder (`Dinov2Model`, `Dinov2WithRegistersModel`: `config.json` + "
    "`model.safetensors`), or its Hub repo (found in the HF cache; `--download` fetches it)",
    command="vitreg diagnose --model hf:facebook/dinov2-with-registers-small --download --out runs/d",
    accepted="a transformers Dinov2Model / Dinov2WithRegistersModel folder (config.json + model.safetensors)",
    recognised_by="config.json model_type dinov2 / dinov2_with_registers; keys embeddings.mask_token + "
    "layer_scale1.lambda1",
    states_architecture="config.json: every size, LayerScale, SwiGLU, eps, registers",
    order=30,
    config_file="config.json",
    model_types=tuple(TYPES),
    weight_files=HUB_WEIGHTS,
    read_config=read_config,
    layout=LAYOUT,
)
