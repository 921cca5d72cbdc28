"""Pieces the ``transformers`` formats share (not a format itself): the two ways transformers names an encoder's
blocks, each mapped onto timm's ``blocks.N.*``, and the config.json keys every transformers vision config writes.

- BERT-style (``ViTModel``, ``DeiTModel``, ``Dinov2Model``): ``encoder.layer.N.attention.attention.{query,key,
  value}``, ``attention.output.dense``, ``layernorm_before`` / ``layernorm_after`` (ViT, DeiT) or ``norm1`` / ``norm2``
  with ``layer_scale1`` / ``mlp.fc1`` (DINOv2), ``intermediate.dense`` / ``output.dense`` (ViT, DeiT). These are the
  names of the files; transformers 5 names the same modules otherwise in memory (``layers.N`` for ViT and DeiT,
  ``attention.{q,k,v,o}_proj``, ``mlp.fc1``, DINOv2's SwiGLU as ``gate_proj`` / ``up_proj`` / ``down_proj``), which a
  ``torch.save(model.state_dict())`` writes: both are read;
- CLIP-style (``CLIPVisionModel``, ``SiglipVisionModel``, ``Siglip2VisionModel``): ``encoder.layers.N.self_attn.
  {q,k,v,out}_proj``, ``layer_norm1`` / ``layer_norm2``, ``mlp.fc1`` / ``mlp.fc2``.

q, k and v are fused into timm's ``attn.qkv`` (q first), as timm's Attention splits them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitreg.errors import CheckpointError
from vitreg.models.load.formats.base import StateDict, ints, number

if TYPE_CHECKING:
    import torch

_BERT = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)$")
_BERT_RENAME = (
    ("attention.output.dense.", "attn.proj."),
    ("attention.o_proj.", "attn.proj."),  # transformers 5's in-memory names
    ("layernorm_before.", "norm1."),
    ("layernorm_after.", "norm2."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
    ("layer_scale1.lambda1", "ls1.gamma"),
    ("layer_scale2.lambda1", "ls2.gamma"),
    ("mlp.weights_in.", "mlp.fc1."),
    ("mlp.weights_out.", "mlp.fc2."),
    ("mlp.down_proj.", "mlp.fc2."),
)
_BERT_QKV = {
    "attention.attention.query.": "q",
    "attention.attention.key.": "k",
    "attention.attention.value.": "v",
    "attention.q_proj.": "q",
    "attention.k_proj.": "k",
    "attention.v_proj.": "v",
}
_CLIP = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_CLIP_RENAME = (("layer_norm1.", "norm1."), ("layer_norm2.", "norm2."), ("self_attn.out_proj.", "attn.proj."))
_CLIP_QKV = {"self_attn.q_proj.": "q", "self_attn.k_proj.": "k", "self_attn.v_proj.": "v"}


def _blocks(sd: StateDict, pattern: re.Pattern[str], rename: tuple, qkv_names: dict[str, str]) -> StateDict:
    import torch

    out: StateDict = {}
    parts: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    glu: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, v in sd.items():
        m = pattern.match(key)
        if m is None:
            continue
        i, rest = int(m.group(1)), m.group(2)
        which = next((n for p, n in qkv_names.items() if rest.startswith(p)), None)
        if which is not None:
            parts.setdefault((i, rest.rsplit(".", 1)[1]), {})[which] = v
            continue
        if rest.startswith(("mlp.gate_proj.", "mlp.up_proj.")):  # a SwiGLU's two halves, packed as timm's fc1
            glu.setdefault((i, rest.rsplit(".", 1)[1]), {})[rest.split(".")[1]] = v
            continue
        for old, new in rename:
            if rest.startswith(old):
                rest = new + rest[len(old) :]
                break
        out[f"blocks.{i}.{rest}"] = v
    for (i, param), qkv in parts.items():
        if set(qkv) != {"q", "k", "v"}:
            raise CheckpointError(f"layer {i}: the attention {param} lacks one of query, key, value")
        out[f"blocks.{i}.attn.qkv.{param}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], 0)
    for (i, param), halves in glu.items():  # silu(gate) * up: timm's SwiGLUPacked chunks fc1 as (gate, up)
        out[f"blocks.{i}.mlp.fc1.{param}"] = torch.cat([halves["gate_proj"], halves["up_proj"]], 0)
    return out


def bert_blocks(sd: StateDict) -> StateDict:
    """``encoder.layer.N.*`` (ViT, DeiT, DINOv2) -> timm's ``blocks.N.*``."""
    return _blocks(sd, _BERT, _BERT_RENAME, _BERT_QKV)


def clip_blocks(sd: StateDict) -> StateDict:
    """``encoder.layers.N.*`` (CLIP, SigLIP) -> timm's ``blocks.N.*``."""
    return _blocks(sd, _CLIP, _CLIP_RENAME, _CLIP_QKV)


def depth_of(sd: StateDict, pattern: str = r"^encoder\.layers?\.(\d+)\.") -> int:
    found = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def vision_config(cfg: dict[str, Any], where: Path | str, whole: str) -> dict[str, Any]:
    """The vision tower's part of a config.json: the file itself, or a whole model's ``vision_config``
    (``model_type`` ``whole``: CLIPModel, SiglipModel)."""
    if cfg.get("model_type") == whole:
        vision = cfg.get("vision_config")
        if not isinstance(vision, dict):
            raise CheckpointError(f"{where}: a {whole} config.json without a vision_config object")
        return vision
    return cfg


def sizes(vision: dict[str, Any], where: Path | str, what: str) -> tuple[int, int, int, int, int]:
    """hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, patch_size of a transformers vision
    config: every size must be in the file (transformers always writes them), and heads must divide the width."""
    dim, depth, heads, hidden, patch = ints(
        vision, where, what, "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
        "patch_size",
    )  # fmt: skip
    if dim % heads:
        raise CheckpointError(f"{where}: hidden_size {dim} is not divisible by num_attention_heads {heads}")
    return dim, depth, heads, hidden, patch


def eps(vision: dict[str, Any], where: Path | str) -> float:
    value = number(vision, where, "layer_norm_eps")
    if not 0 < value < 1:
        raise CheckpointError(f"{where}: layer_norm_eps must be in (0, 1), got {value}")
    return value


def activation(vision: dict[str, Any], where: Path | str, allowed: dict[str, str]) -> str:
    """transformers' ``hidden_act`` -> ModelConfig.act (only the ones ``allowed`` for this family)."""
    act = vision.get("hidden_act")
    if act not in allowed:
        raise CheckpointError(f"{where}: hidden_act {act!r} is not supported here ({', '.join(allowed)})")
    return allowed[act]


def architectures(cfg: dict[str, Any], default: str) -> str:
    named = cfg.get("architectures")
    return str(named[0]) if isinstance(named, list) and named and isinstance(named[0], str) else default


def grid_tensor(t: torch.Tensor) -> torch.Tensor:
    """A position table (N, C) or (1, N, C) as (1, N, C)."""
    return t.unsqueeze(0) if t.ndim == 2 else t
