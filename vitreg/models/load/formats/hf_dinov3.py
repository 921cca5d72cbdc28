"""A ``transformers`` DINOv3 folder (``DINOv3ViTModel``): ``config.json`` + ``model.safetensors``.

- recognised by: ``config.json`` with ``model_type`` ``dinov3_vit``; keys ``embeddings.register_tokens`` +
  ``embeddings.patch_embeddings.weight`` (no ``projection``) + ``layer.N.layer_scale1.lambda1``;
- the architecture: every size in config.json, the gated (SwiGLU) MLP or not, the RoPE period (``rope_theta``), the
  q/k/v biases, LayerScale and the registers; the preprocessing from ``preprocessor_config.json``, else ImageNet's;
- onto timm: timm's DINOv3 (an ``Eva`` with DINOv3's RoPE, ``vit_*_dinov3``): q/k/v fused with the q and v biases
  apart (timm's Eva keeps k's bias at zero, as DINOv3 does), LayerScale -> ``gamma_1`` / ``gamma_2``, the gated MLP's
  gate / up / down -> ``fc1_g`` / ``fc1_x`` / ``fc2``; registers (DINOv3's storage tokens) -> ``reg_token``.
  ``last_hidden_state`` is after the final ``norm``: vitreg's tokens after its final norm; ``pooler_output`` its
  [CLS]. What timm's Eva cannot express is refused (a key bias, an eps other than 1e-5, another activation).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitreg.errors import CheckpointError, ConfigError
from vitreg.models.load.formats.base import (
    HUB_WEIGHTS,
    Format,
    Layout,
    StateDict,
    ints,
    mean_std,
    mlp_ratio,
    number,
    preprocessor,
    with_processor,
)
from vitreg.models.load.formats.hf_common import architectures, sizes
from vitreg.models.load.formats.timm_folder import timm_filter

if TYPE_CHECKING:
    import torch.nn as nn

    from vitreg.models.presets import ModelConfig

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
TIMM_EPS = 1e-5  # timm's DINOv3 entry points fix their LayerNorm's eps


def _encoder(sd: StateDict) -> StateDict:
    """transformers 5 names the blocks ``model.layer.N`` in memory and ``layer.N`` in its files."""
    return {k.removeprefix("model."): v for k, v in sd.items()}


def recognise(sd: StateDict) -> bool:
    sd = _encoder(sd)
    return (
        "embeddings.register_tokens" in sd
        and "embeddings.patch_embeddings.weight" in sd
        and "layer.0.layer_scale1.lambda1" in sd
    )


def to_timm(sd: StateDict, model: nn.Module) -> StateDict:
    import torch

    sd = _encoder(sd)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layer."))
    dim = sd["embeddings.cls_token"].shape[-1]
    zeros = torch.zeros(dim)
    out: StateDict = {
        "cls_token": sd["embeddings.cls_token"],
        "reg_token": sd["embeddings.register_tokens"],
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.bias"],
        "norm.weight": sd["norm.weight"],
        "norm.bias": sd["norm.bias"],
    }
    for i in range(depth):
        a, b = f"layer.{i}.", f"blocks.{i}."
        for n in ("norm1", "norm2"):
            out[f"{b}{n}.weight"], out[f"{b}{n}.bias"] = sd[f"{a}{n}.weight"], sd[f"{a}{n}.bias"]
        att = a + "attention."
        out[b + "attn.qkv.weight"] = torch.cat([sd[f"{att}{p}_proj.weight"] for p in "qkv"], 0)
        if f"{att}q_proj.bias" in sd:
            out[b + "attn.q_bias"], out[b + "attn.v_bias"] = sd[att + "q_proj.bias"], sd[att + "v_proj.bias"]
        out[b + "attn.proj.weight"] = sd[att + "o_proj.weight"]
        out[b + "attn.proj.bias"] = sd.get(att + "o_proj.bias", zeros)
        out[b + "gamma_1"], out[b + "gamma_2"] = sd[a + "layer_scale1.lambda1"], sd[a + "layer_scale2.lambda1"]
        mlp = {"up_proj": "fc1", "down_proj": "fc2"}
        if f"{a}mlp.gate_proj.weight" in sd:
            mlp = {"gate_proj": "fc1_g", "up_proj": "fc1_x", "down_proj": "fc2"}
        for theirs, ours in mlp.items():
            w = sd[f"{a}mlp.{theirs}.weight"]
            out[f"{b}mlp.{ours}.weight"] = w
            out[f"{b}mlp.{ours}.bias"] = sd.get(f"{a}mlp.{theirs}.bias", torch.zeros(w.shape[0]))
    return timm_filter(out, model)


def read_config(cfg: dict[str, Any], folder: Path) -> ModelConfig:
    from vitreg.models.presets import model_config

    where = folder / "config.json"
    dim, depth, heads, hidden, patch = sizes(cfg, where, "DINOv3")
    (size,) = ints(cfg, where, "DINOv3", "image_size")
    gated = bool(cfg.get("use_gated_mlp", False))
    act = cfg.get("hidden_act")
    if act != ("silu" if gated else "gelu"):
        raise CheckpointError(f"{where}: hidden_act {act!r} with use_gated_mlp={gated} is not timm's DINOv3")
    eps = number(cfg, where, "layer_norm_eps")
    if abs(eps - TIMM_EPS) > 1e-12:
        raise CheckpointError(f"{where}: layer_norm_eps {eps} (timm's DINOv3 has {TIMM_EPS})")
    q, k, v = (bool(cfg.get(f"{p}_bias", d)) for p, d in (("query", True), ("key", False), ("value", True)))
    if k or q != v:
        raise CheckpointError(
            f"{where}: query_bias={q}, key_bias={k}, value_bias={v} (timm's DINOv3: q and v alike, no k)"
        )
    kwargs: dict[str, Any] = dict(
        embed_dim=dim, depth=depth, num_heads=heads, patch_size=patch, mlp_ratio=mlp_ratio(hidden, dim),
        qkv_bias=q, init_values=number(cfg, where, "layerscale_value", 1.0),
        rope_temperature=number(cfg, where, "rope_theta", 100.0), global_pool="token", num_classes=0,
    )  # fmt: skip
    if gated:
        kwargs["swiglu_align_to"] = 1  # the hidden width exactly as the file has it
    name = "timm:vit_small_plus_patch16_dinov3" if gated else "timm:vit_small_patch16_dinov3"
    registers = int(number(cfg, where, "num_register_tokens", 0))
    try:
        out = model_config(name, registers=registers, img_size=size, **kwargs)
    except ConfigError as err:
        raise CheckpointError(f"{where}: {err}") from None
    pre = preprocessor(folder)
    out.mean, out.std = mean_std(pre, IMAGENET)
    out.source = f"transformers {architectures(cfg, 'DINOv3ViTModel')}"
    return with_processor(out, pre, "DINOv3ViTImageProcessor")


LAYOUT = Layout(name="transformers DINOv3", recognise=recognise, to_timm=to_timm)

FORMAT = Format(
    key="hf-dinov3",
    preprocessing="its `preprocessor_config.json` (`DINOv3ViTImageProcessor`: squashed, bilinear)",
    resampling="no table: RoPE over the patch grid, at any size as transformers computes it",
    owner="transformers",
    what="a `transformers` DINOv3 folder (`DINOv3ViTModel`: RoPE, 4 registers; read into timm's DINOv3 Eva)",
    command="vitreg diagnose --model hf:facebook/dinov3-vits16-pretrain-lvd1689m --download --out runs/d",
    accepted="a transformers DINOv3ViTModel folder",
    recognised_by="config.json model_type dinov3_vit; keys embeddings.register_tokens + "
    "embeddings.patch_embeddings.weight + layer.N.layer_scale1.lambda1",
    states_architecture="config.json: sizes, use_gated_mlp, rope_theta, q/k/v biases, LayerScale, registers",
    order=33,
    config_file="config.json",
    model_types=("dinov3_vit",),
    weight_files=HUB_WEIGHTS,
    read_config=read_config,
    layout=LAYOUT,
)
