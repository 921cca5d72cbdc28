"""A ``transformers`` BEiT folder (``BeitModel``, ``BeitForImageClassification``, ``BeitForMaskedImageModeling``:
microsoft/beit-*), loaded into timm's ``Beit`` (relative position biases, LayerScale, mean pooling). data2vec-vision
(:mod:`.hf_data2vec_vision`) is the same model under another prefix.

- recognised by: ``config.json`` with ``model_type`` ``beit``; BERT-style keys (``embeddings.patch_embeddings.
  projection`` + ``layernorm_before``) whose attention has a query bias and no key bias (BEiT's), under ``beit.`` in
  the task models;
- the architecture: every size in config.json, and what timm's Beit can express of the rest:
  ``use_absolute_position_embeddings``, ``use_relative_position_bias`` (a table per block),
  ``use_shared_relative_position_bias`` (one table for every block), ``layer_scale_init_value`` (> 0: LayerScale,
  its values are weights), ``use_mean_pooling`` (the image embedding is the mean of the patch tokens under a norm,
  timm's ``fc_norm``, and there is no final norm on the tokens), ``layer_norm_eps``. Refused, naming the key:
  another ``hidden_act`` than gelu, a ``head_dim`` other than width / heads, other than 3 ``num_channels``;
- onto timm: q and k and v fused into ``attn.qkv`` with ``q_bias`` / ``v_bias`` (k has none, as in timm),
  ``lambda_1`` / ``lambda_2`` -> ``gamma_1`` / ``gamma_2``, the pooler's ``layernorm`` -> ``fc_norm``. A folder
  saved without the pooler (``Data2VecVisionModel``'s default, the MIM and segmentation models) has no weights for
  the mean-pooled embedding's norm: it gets the unit norm transformers would initialise, and the model's source says
  so (the tokens, which is what vitreg analyses, do not depend on it).
- at another ``--img-size``: the position table as transformers' ``interpolate_pos_encoding`` (bicubic, no
  antialias), the relative position bias tables as its ``BeitRelativePositionBias`` (bilinear, no antialias). timm's
  Beit reads images of its own size only: an input of another size is refused by the Inspector.
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
from vitreg.models.load.formats.resampling import REL_POS_SAID, TRANSFORMERS
from vitreg.models.load.formats.timm_folder import timm_filter

if TYPE_CHECKING:
    import torch.nn as nn

    from vitreg.models.presets import ModelConfig

#: transformers' BeitImageProcessor defaults (microsoft/beit-* state the same); data2vec-vision's processor is it too
BEIT_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
ACTIVATIONS = {"gelu": "gelu"}  # timm's Beit builds its MLP with nn.GELU, whatever it is given
#: the timm model whose class is built (every size and flag is passed: the name's own sizes are not used)
TIMM_NAME = "beit_base_patch16_224"
#: the prefixes of the backbone in the task models (BEiT's, data2vec-vision's)
PREFIXES = ("beit.", "data2vec_vision.")
_TABLE = "relative_position_bias.relative_position_bias_table"


def backbone(sd: StateDict) -> StateDict:
    return strip_prefix(sd, *PREFIXES)  # *ForImageClassification, *ForMaskedImageModeling wrap the backbone


def recognise(sd: StateDict) -> bool:
    """BERT-style ViT keys whose attention has a query bias but no key bias (BEiT's), or BEiT's LayerScale or
    relative position tables."""
    sd = backbone(sd)
    if "embeddings.patch_embeddings.projection.weight" not in sd or not any(".layernorm_before." in k for k in sd):
        return False
    no_key_bias = any(k.endswith("attention.attention.query.bias") for k in sd) and not any(
        k.endswith("attention.attention.key.bias") for k in sd
    )
    return no_key_bias or any(k.endswith((".lambda_1", _TABLE)) for k in sd)


def beit_to_timm(sd: StateDict, model: nn.Module) -> StateDict:
    """BEiT / data2vec-vision keys -> timm's Beit's; the position table and the relative position bias tables are
    resampled to the model's grid as transformers does."""
    import torch

    sd = backbone(sd)
    blocks: StateDict = {}
    out: StateDict = {"cls_token": sd["embeddings.cls_token"]}
    for k, v in sd.items():
        head, sep, rest = k.partition(".")
        if k in ("encoder." + _TABLE, "shared_position_bias.relative_position_bias_table"):
            out["rel_pos_bias.relative_position_bias_table"] = v  # the shared table (file / transformers 5 names)
            continue
        if head not in ("encoder", "layers") or not sep or k.endswith("relative_position_index"):
            continue  # the index is a buffer some old checkpoints kept: timm rebuilds it
        if head == "encoder" and not rest.startswith("layer."):
            continue
        layer, _, part = (rest if head == "layers" else rest.partition(".")[2]).partition(".")
        n = f"{head}.{layer}." if head == "layers" else f"encoder.layer.{layer}."
        if part.endswith(_TABLE):  # attention.attention.relative_position_bias... or relative_position_bias...
            out[f"blocks.{layer}.attn.relative_position_bias_table"] = v
        elif part in ("lambda_1", "lambda_2"):
            out[f"blocks.{layer}.gamma_{part[-1]}"] = v
        elif part in ("attention.attention.query.bias", "attention.q_proj.bias"):
            out[f"blocks.{layer}.attn.q_bias"] = v
        elif part in ("attention.attention.value.bias", "attention.v_proj.bias"):
            out[f"blocks.{layer}.attn.v_bias"] = v
        else:  # weights, norms, MLP: as ViT's (q/k/v weights fused into qkv, q first)
            blocks[n + part] = v
    out.update(bert_blocks(blocks))
    if "embeddings.position_embeddings" in sd:
        out["pos_embed"] = sd["embeddings.position_embeddings"]  # (1, 1 + M*M, C): [CLS] first
    out["patch_embed.proj.weight"] = sd["embeddings.patch_embeddings.projection.weight"]
    out["patch_embed.proj.bias"] = sd["embeddings.patch_embeddings.projection.bias"]
    vit: Any = model
    if isinstance(vit.fc_norm, torch.nn.LayerNorm):  # use_mean_pooling: the pooler's norm of the mean patch token
        dim = out["cls_token"].shape[-1]
        out["fc_norm.weight"] = sd.get("pooler.layernorm.weight", torch.ones(dim))  # no pooler saved: a unit norm
        out["fc_norm.bias"] = sd.get("pooler.layernorm.bias", torch.zeros(dim))
    elif "layernorm.weight" in sd:
        out["norm.weight"], out["norm.bias"] = sd["layernorm.weight"], sd["layernorm.bias"]
    return timm_filter(out, model, TRANSFORMERS)


def _flag(cfg: dict[str, Any], where: Path, key: str, default: bool) -> bool:
    v = cfg.get(key, default)
    if not isinstance(v, bool):
        raise CheckpointError(f"{where}: {key} must be true or false, got {v!r}")
    return v


def beit_config(cfg: dict[str, Any], folder: Path, what: str, default_class: str) -> ModelConfig:
    """A transformers BEiT-style config.json -> timm's Beit with every size and flag it states, prepared as
    BeitImageProcessor does (the folder's preprocessor_config.json, else the class's defaults)."""
    from vitreg.models.presets import TIMM_PREFIX, ModelConfig

    where = folder / "config.json"
    dim, depth, heads, hidden, patch = sizes(cfg, where, what)
    (size,) = ints(cfg, where, what, "image_size")
    if size % patch:
        raise CheckpointError(f"{where}: image_size {size} is not a multiple of patch_size {patch}")
    if int(cfg.get("num_channels", 3)) != 3:
        raise CheckpointError(f"{where}: num_channels {cfg.get('num_channels')} (vitreg reads RGB models)")
    head_dim = cfg.get("head_dim")
    if head_dim is not None and head_dim != dim // heads:
        raise CheckpointError(
            f"{where}: head_dim {head_dim!r} is not hidden_size / num_attention_heads ({dim // heads}); timm's Beit "
            "cannot express it"
        )
    act = activation(cfg, where, ACTIVATIONS)
    scale = cfg.get("layer_scale_init_value", 0.1)
    if isinstance(scale, bool) or not isinstance(scale, int | float):
        raise CheckpointError(f"{where}: layer_scale_init_value must be a number, got {scale!r}")
    init_values = float(scale) if scale > 0 else None  # transformers: no LayerScale at 0 or below
    mean_pooling = _flag(cfg, where, "use_mean_pooling", True)
    flags = {
        "use_abs_pos_emb": _flag(cfg, where, "use_absolute_position_embeddings", False),
        "use_rel_pos_bias": _flag(cfg, where, "use_relative_position_bias", False),
        "use_shared_rel_pos_bias": _flag(cfg, where, "use_shared_relative_position_bias", False),
    }
    shape: dict[str, Any] = dict(patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads)
    pre = preprocessor(folder)
    mean, std = mean_std(pre, BEIT_MEAN_STD)
    kind = architectures(cfg, default_class)
    positions = [k for k, v in flags.items() if v] or ["no position at all"]
    pooled = "the mean patch token under a norm" if mean_pooling else "[CLS] after the final norm"
    out = ModelConfig(
        spec=TIMM_PREFIX + TIMM_NAME,
        img_size=(size, size),
        global_pool="avg" if mean_pooling else "token",
        init_values=init_values,
        norm_eps=eps(cfg, where),
        act=act,
        mean=mean,
        std=std,
        # timm's Beit takes its sizes as arguments; qkv_bias: transformers' BEiT always has q and v biases; no
        # LayerScale is init_values 0 (timm.create_model drops a None, and the name's own 0.1 would stand)
        timm_kwargs={**shape, "mlp_ratio": hidden / dim, "qkv_bias": True, "init_values": init_values or 0.0, **flags},
        source=f"transformers {kind} as timm's Beit ({', '.join(positions)}; its embedding: {pooled})",
        **shape,
        mlp_ratio=hidden / dim,
    )
    return with_processor(out, pre, "BeitImageProcessor")


def read_config(cfg: dict[str, Any], folder: Path) -> ModelConfig:
    return beit_config(cfg, folder, "BEiT", "BeitModel")


LAYOUT = Layout(name="transformers BEiT", recognise=recognise, to_timm=beit_to_timm)
RESAMPLING = f"{TRANSFORMERS.said}; {REL_POS_SAID}; inputs of another size refused (timm's Beit)"

FORMAT = Format(
    key="hf-beit",
    preprocessing="its `preprocessor_config.json` (`BeitImageProcessor`: squashed, bicubic)",
    resampling=RESAMPLING,
    owner="transformers",
    what="a `transformers` BEiT folder (`BeitModel`, `BeitForImageClassification`, `BeitForMaskedImageModeling`: "
    "microsoft/beit-*), read into timm's `Beit` (relative position bias, LayerScale, mean pooling)",
    command="vitreg diagnose --model hf:microsoft/beit-base-patch16-224 --download --out runs/d",
    accepted="a transformers BeitModel folder",
    recognised_by="config.json model_type beit; BERT-style keys whose attention has a query bias and no key bias",
    states_architecture="config.json: sizes, position flags, layer_scale_init_value, use_mean_pooling, hidden_act, "
    "layer_norm_eps",
    order=35,
    config_file="config.json",
    model_types=("beit",),
    weight_files=HUB_WEIGHTS,
    read_config=read_config,
    layout=LAYOUT,
)
