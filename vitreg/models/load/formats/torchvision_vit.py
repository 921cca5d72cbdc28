"""torchvision's ViTs by name (``torchvision:vit_b_16``, ``vit_b_32``, ``vit_l_16``, ``vit_l_32``, ``vit_h_14``) with
their weights file (``--weights FILE``: a state dict as torchvision saves it, read weights-only).

- recognised by: the ``torchvision:`` prefix; keys ``conv_proj.weight`` + ``encoder.layers.encoder_layer_N.*``;
- the architecture: torchvision's own builder of that name, built on the meta device (image size, patch, width, MLP
  width, depth, heads, eps); the preprocessing from its default weights' transforms (ImageNet's statistics);
- onto timm: the original ViT layout (``no_embed_class=False``, [CLS] in the position embedding, a patch-embedding
  bias, eps 1e-6, exact GELU): ``self_attention.in_proj_*`` is timm's fused ``qkv`` (q, k, v in that order),
  ``ln_1`` / ``ln_2`` / ``mlp.0`` / ``mlp.3`` -> ``norm1`` / ``norm2`` / ``mlp.fc1`` / ``mlp.fc2``, ``encoder.ln`` ->
  ``norm``. torchvision's encoder output is after ``encoder.ln``: vitreg's tokens after its final norm. The
  classification head (and ``vit_h_14``'s pre-logits layer) is not part of the backbone.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from vitreg.errors import ConfigError
from vitreg.models.load.formats.base import Format, Layout, StateDict
from vitreg.models.load.formats.resampling import TORCHVISION
from vitreg.models.load.formats.timm_folder import timm_filter
from vitreg.models.processor import Processor, from_pil_resample

if TYPE_CHECKING:
    import torch.nn as nn

    from vitreg.models.presets import ModelConfig

PREFIX = "torchvision:"
_LAYER = re.compile(r"^encoder\.layers\.encoder_layer_(\d+)\.(.+)$")
_RENAME = {
    "ln_1.": "norm1.",
    "ln_2.": "norm2.",
    "self_attention.in_proj_weight": "attn.qkv.weight",
    "self_attention.in_proj_bias": "attn.qkv.bias",
    "self_attention.out_proj.": "attn.proj.",
    "mlp.0.": "mlp.fc1.",
    "mlp.3.": "mlp.fc2.",
    "mlp.linear_1.": "mlp.fc1.",  # the names of torchvision's checkpoints before 0.13
    "mlp.linear_2.": "mlp.fc2.",
}


def recognise(sd: StateDict) -> bool:
    return "conv_proj.weight" in sd and any(k.startswith("encoder.layers.encoder_layer_") for k in sd)


def to_timm(sd: StateDict, model: nn.Module) -> StateDict:
    out: StateDict = {
        "cls_token": sd["class_token"],  # (1, 1, C)
        "pos_embed": sd["encoder.pos_embedding"],  # (1, 1 + N, C): [CLS] first
        "patch_embed.proj.weight": sd["conv_proj.weight"],
        "patch_embed.proj.bias": sd["conv_proj.bias"],
        "norm.weight": sd["encoder.ln.weight"],
        "norm.bias": sd["encoder.ln.bias"],
    }
    for key, v in sd.items():
        m = _LAYER.match(key)
        if m is None:
            continue
        rest = m.group(2)
        for old, new in _RENAME.items():
            if rest.startswith(old):
                rest = new + rest[len(old) :]
                break
        out[f"blocks.{m.group(1)}.{rest}"] = v
    return timm_filter(out, model, TORCHVISION)


def read_name(spec: str, *, registers: int | None, img_size: Any, overrides: dict[str, Any]) -> ModelConfig:
    """The architecture torchvision's builder of the name makes (registers, image size and options are applied by
    the resolver)."""
    try:
        import torch
        import torchvision
    except ImportError:
        raise ConfigError(f"{spec}: reading torchvision's ViTs needs torchvision (pip install torchvision)") from None
    from vitreg.models.presets import ModelConfig

    name = spec[len(PREFIX) :]
    known = [n for n in torchvision.models.list_models() if n.startswith("vit_")]
    if name not in known:
        raise ConfigError(f"torchvision has no ViT named {name!r} (torchvision {torchvision.__version__}: {known})")
    with torch.device("meta"):
        tv: Any = torchvision.models.get_model(name)
    transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    dim = int(tv.hidden_dim)
    return ModelConfig(
        spec=spec,
        img_size=(int(tv.image_size), int(tv.image_size)),
        patch_size=int(tv.patch_size),
        embed_dim=dim,
        depth=len(tv.encoder.layers),
        num_heads=int(tv.encoder.layers[0].self_attention.num_heads),
        mlp_ratio=int(tv.mlp_dim) / dim,
        init_values=None,
        no_embed_class=False,
        norm_eps=float(tv.encoder.ln.eps),
        mean=tuple(float(x) for x in transforms.mean),  # type: ignore[arg-type]
        std=tuple(float(x) for x in transforms.std),  # type: ignore[arg-type]
        source=f"torchvision {name}",
        processor=processor(transforms, name),
    )


def processor(transforms: Any, name: str) -> Processor:
    """torchvision's ``ImageClassification`` of the default weights (``weights.transforms()``): Resize of the shorter
    side to ``resize_size``, CenterCrop of ``crop_size``, its interpolation (ViT-B/16 V1: 256, 224, bilinear)."""
    resize, crop = int(transforms.resize_size[0]), int(transforms.crop_size[0])
    how = str(getattr(transforms.interpolation, "value", transforms.interpolation))
    owner = f"torchvision {name} DEFAULT weights' transforms"
    return Processor("shorter", crop / resize, from_pil_resample(how, "bilinear"), "int", "round", owner)


LAYOUT = Layout(name="torchvision ViT", recognise=recognise, to_timm=to_timm)

FORMAT = Format(
    key="torchvision",
    preprocessing="the DEFAULT weights' `transforms()` (ViT-B/16: shorter side to 256, the centre 224, bilinear)",
    resampling=TORCHVISION.said,
    owner="torchvision",
    what="a torchvision ViT by name with its weights file (`vit_b_16`, `vit_b_32`, `vit_l_16`, `vit_l_32`, "
    "`vit_h_14`; a state dict read weights-only)",
    command="vitreg diagnose --model torchvision:vit_b_16 --weights vit_b_16-c867db91.pth --out runs/d",
    accepted="torchvision:NAME --weights FILE (a torchvision ViT)",
    recognised_by="the torchvision: prefix; keys conv_proj + encoder.layers.encoder_layer_N",
    states_architecture="torchvision's builder of the name, built on the meta device",
    order=45,
    prefix=PREFIX,
    read_name=read_name,
    layout=LAYOUT,
)
