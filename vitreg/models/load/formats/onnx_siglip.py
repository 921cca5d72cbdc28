"""ONNX exports of a ``transformers`` SigLIP vision tower (``SiglipVisionModel``), read by the one ``.onnx`` format
(:mod:`.onnx_clip`) with the graph machinery of :mod:`.onnx_graph` (not a format itself).

SigLIP has no [CLS]: ``embeddings.patch_embedding`` (a convolution with a bias), ``embeddings.position_embedding``
(grid^2, C: the patches only), CLIP's encoder names (``/encoder/layers.0/self_attn/q_proj/MatMul``, ``layer_norm1``,
``mlp/fc1``) and ``post_layernorm``. Its attention-pooling head (``SiglipMultiheadAttentionPoolingHead``) goes through
``nn.MultiheadAttention``, which the exporter spells out: the fused ``head.attention.in_proj_weight`` (3C, C: q, k, v)
and its bias are initialisers that Slice nodes cut (read as they are), the output projection is a ``Gemm`` (an int8
``MatMulInteger`` on its transposed weight after quantisation); ``head.probe``, ``head.layernorm`` and
``head.mlp.fc1`` / ``fc2`` are read as the encoder's are. The head's number of heads is the tower's (transformers
builds it from the same ``num_attention_heads``). A graph without the head (``vision_use_head: false``) is read
without it.

The weights come out in ``SiglipVisionModel``'s keys (without the ``vision_model.`` prefix, which its layout strips
when it is there) and go through :mod:`.hf_siglip`'s layout; the config is what its ``config.json`` would state, read
by its folder reader; mean/std from a ``preprocessor_config.json`` beside the file, else ``SiglipImageProcessor``'s
(0.5). SigLIP 2 (NaFlex: a Linear patch embedding and a resized position grid) is not read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitreg.models.load.formats import onnx_graph as og
from vitreg.models.load.formats.hf_siglip import LAYOUT, siglip_config
from vitreg.models.load.formats.onnx_graph import Family, Graph, OnnxTower

if TYPE_CHECKING:
    import torch

    from vitreg.models.presets import ModelConfig

STACK = og.CLIP_STACK  # SigLIP's encoder is CLIP's
HIDDEN_ACT = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}  # the activation found -> transformers' hidden_act


def _is_siglip(g: Graph) -> bool:
    return (
        g.find("post_layernorm.weight") is not None
        and g.find("embeddings.class_embedding") is None
        and g.find("embeddings.cls_token") is None
    )


def _read(g: Graph) -> tuple[dict[str, Any], dict[str, torch.Tensor], list[str]]:
    g.root("post_layernorm.weight")
    if not g.scope(g.n + "encoder/layers."):
        raise og.no_module_paths(g)
    emb = "embeddings."
    if not g.scope(g.n + "embeddings/patch_embedding/", ("Conv", "ConvInteger")) and g.scope(
        g.n + "embeddings/patch_embedding/", ("MatMul", "MatMulInteger", "Gemm")
    ):  # SigLIP 2 (NaFlex) embeds flattened patches with a Linear and resizes its position grid per image
        raise g.fail(
            "a SigLIP 2 (NaFlex) graph: its Linear patch embedding and per-image position resize are not read from "
            f"ONNX (load its transformers folder instead); accepted: {g.accepted}"
        )
    sd: dict[str, torch.Tensor] = {}
    quantized: list[str] = []
    patch = og.patch_weight(g, g.n + "embeddings/patch_embedding/", g.t + emb + "patch_embedding.weight", quantized,
                            bias=True)  # fmt: skip
    sd[emb + "patch_embedding.weight"] = og.tensor(patch)  # (C, 3, p, p)
    sd[emb + "patch_embedding.bias"] = og.tensor(g.floats(g.t + emb + "patch_embedding.bias"))
    pos = og.embedding(g, g.t + emb + "position_embedding.weight", quantized)  # (grid^2, C)
    sd[emb + "position_embedding.weight"] = og.tensor(pos)
    for p in ("weight", "bias"):
        sd[f"post_layernorm.{p}"] = og.tensor(g.floats(f"{g.t}post_layernorm.{p}"))
    depth = og.clip_layers(g, "", sd, quantized)
    has_head = g.find("head.probe") is not None
    if has_head:
        _head(g, sd, quantized)
    width, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    heads, head_dim = og.heads(g, STACK, width)
    og.check_scale(g, STACK, head_dim)
    grid = og.square_grid(g, int(pos.shape[0]), 0, "no prefix token")
    act = og.activation(g, STACK, depth, tuple(HIDDEN_ACT))
    config = {
        "model_type": "siglip_vision_model",
        "hidden_size": width,
        "num_hidden_layers": depth,
        "num_attention_heads": heads,
        "intermediate_size": int(sd["encoder.layers.0.mlp.fc1.weight"].shape[0]),
        "patch_size": patch_size,
        "image_size": og.image_size(g, patch_size, grid),
        "layer_norm_eps": og.norm_eps(g, ("layer_norm", "layernorm")),
        "hidden_act": HIDDEN_ACT[act],
        "vision_use_head": has_head,
    }
    return config, sd, quantized


def _head(g: Graph, sd: dict[str, torch.Tensor], quantized: list[str]) -> None:
    """The attention-pooling head's weights into ``sd`` (``head.*``)."""
    sd["head.probe"] = og.tensor(g.floats(g.t + "head.probe"))  # (1, 1, C)
    for p in ("in_proj_weight", "in_proj_bias"):  # (3C, C) and (3C,), cut into q, k, v by Slice nodes
        sd[f"head.attention.{p}"] = og.tensor(g.floats(f"{g.t}head.attention.{p}"))
    weight, was_int8 = og.linear_weight(g, g.n + "head/attention/Gemm")  # the output projection
    sd["head.attention.out_proj.weight"] = og.tensor(weight)
    sd["head.attention.out_proj.bias"] = og.tensor(g.floats(g.t + "head.attention.out_proj.bias"))
    if was_int8:
        quantized.append("head.attention.out_proj.weight")
    for p in ("weight", "bias"):
        sd[f"head.layernorm.{p}"] = og.tensor(g.floats(f"{g.t}head.layernorm.{p}"))
    for fc in ("fc1", "fc2"):
        weight, was_int8 = og.linear_weight(g, f"{g.n}head/mlp/{fc}/")
        sd[f"head.mlp.{fc}.weight"] = og.tensor(weight)
        sd[f"head.mlp.{fc}.bias"] = og.tensor(g.floats(f"{g.t}head.mlp.{fc}.bias"))
        if was_int8:
            quantized.append(f"head.mlp.{fc}.weight")


def _model_config(tower: OnnxTower, path: Path) -> ModelConfig:
    pre, where = og.preprocessor_beside(path, "SiglipImageProcessor")
    source = og.source(tower, "a transformers SiglipVisionModel", where)
    return siglip_config(tower.config, path, f"onnx:{path.name}", source, int(tower.config["image_size"]), pre)


FAMILIES = (Family("SigLIP", _is_siglip, _read, _model_config, LAYOUT),)
