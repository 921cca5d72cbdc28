"""Foreign checkpoint layouts -> the keys of the timm model they are loaded into.

Handled here (timm does not know them): Hugging Face ``transformers`` DINOv2 (``Dinov2Model``,
``Dinov2WithRegistersModel``), ``transformers`` CLIP vision towers (:mod:`vitreg.models.hf_clip`, also what the ONNX
reader produces) and the original DINOv2 layout (also its chunked blocks). Everything timm knows goes
through timm's own ``checkpoint_filter_fn`` of the target class: OpenAI / OpenCLIP visual towers
(``visual.class_embedding``), DeiT-III originals (``blocks.N.gamma_1``), DINOv3 originals (``storage_tokens``, for
Eva models), position-embedding and patch-embedding resampling.
"""

from __future__ import annotations

import re

import torch
from timm.models import eva, vision_transformer

from vitreg.models.hf_clip import convert_hf_clip, is_hf_clip

_HF_BLOCK = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
# transformers' own names (files on disk) and its in-memory names of 5.x, both -> timm
_HF_RENAME = {
    "attention.output.dense.": "attn.proj.",
    "attention.o_proj.": "attn.proj.",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "mlp.weights_in.": "mlp.fc1.",
    "mlp.weights_out.": "mlp.fc2.",
}
_HF_QKV = (("attention.attention.query.", "attention.q_proj."), ("attention.attention.key.", "attention.k_proj."),
           ("attention.attention.value.", "attention.v_proj."))  # fmt: skip


def is_hf_dinov2(sd: dict[str, torch.Tensor]) -> bool:
    return "embeddings.cls_token" in sd and "embeddings.patch_embeddings.projection.weight" in sd


def is_dinov2_original(sd: dict[str, torch.Tensor]) -> bool:
    """DINOv2's own ``DinoVisionTransformer`` keys: ``mask_token`` and/or ``register_tokens``."""
    return ("mask_token" in sd or "register_tokens" in sd) and "storage_tokens" not in sd


def convert_hf_dinov2(sd: dict[str, torch.Tensor], no_embed_class: bool = True) -> dict[str, torch.Tensor]:
    """``transformers`` DINOv2 keys -> timm VisionTransformer keys: q/k/v fused into ``qkv``, [CLS]'s position
    folded into ``cls_token`` (timm's register layout, ``no_embed_class``), registers into ``reg_token``."""
    sd = {k.removeprefix("dinov2."): v for k, v in sd.items()}  # Dinov2For* heads wrap the backbone
    pos = sd["embeddings.position_embeddings"]  # (1, 1 + N, C)
    cls = sd["embeddings.cls_token"]  # (1, 1, C)
    out: dict[str, torch.Tensor] = {
        "cls_token": cls + pos[:, :1] if no_embed_class else cls,
        "pos_embed": pos[:, 1:] if no_embed_class else pos,
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
    }
    if "embeddings.register_tokens" in sd:
        out["reg_token"] = sd["embeddings.register_tokens"]
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, v in sd.items():
        m = _HF_BLOCK.match(key)
        if m is None:
            continue
        i, rest = int(m.group(1)), m.group(2)
        for old, new in _HF_QKV:
            rest = rest.replace(old, new)
        if rest.startswith("attention.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
            _, proj, param = rest.split(".")
            qkv.setdefault((i, param), {})[proj] = v
            continue
        for old, new in _HF_RENAME.items():
            rest = rest.replace(old, new)
        out[f"blocks.{i}.{rest}"] = v
    for (i, param), parts in qkv.items():
        out[f"blocks.{i}.attn.qkv.{param}"] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]], 0)
    return out


def convert_dinov2(sd: dict[str, torch.Tensor], no_embed_class: bool = True) -> dict[str, torch.Tensor]:
    """Original DINOv2 keys -> timm VisionTransformer keys.

    - ``register_tokens`` (1, R, C) -> ``reg_token``.
    - DINOv2 adds ``pos_embed[:, 0]`` to [CLS]; with ``no_embed_class`` (timm layout used for registers) that
      constant is folded into ``cls_token`` and ``pos_embed`` keeps only the patch grid (1, H*W, C).
    - chunked blocks ``blocks.<chunk>.<i>.`` -> ``blocks.<i>.`` (the index inside a chunk is already global).
    - SwiGLU ``mlp.w12`` / ``mlp.w3`` -> ``mlp.fc1`` / ``mlp.fc2`` (timm SwiGLUPacked).
    """
    sd = dict(sd)
    sd.pop("mask_token", None)
    out: dict[str, torch.Tensor] = {}
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


def to_model_layout(sd: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``sd`` in the keys of ``model`` (a timm VisionTransformer or Eva), position embedding resampled to its grid."""
    no_embed_class = bool(getattr(model, "no_embed_class", True))
    if is_hf_clip(sd):
        sd = convert_hf_clip(sd)
    elif is_hf_dinov2(sd):
        sd = convert_hf_dinov2(sd, no_embed_class)
    elif is_dinov2_original(sd) and isinstance(model, vision_transformer.VisionTransformer):
        sd = convert_dinov2(sd, no_embed_class)
    if isinstance(model, eva.Eva):
        return eva.checkpoint_filter_fn(sd, model)
    return vision_transformer.checkpoint_filter_fn(sd, model, adapt_layer_scale=True)  # type: ignore[arg-type]
