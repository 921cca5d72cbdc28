"""A ``transformers`` ViTMAE folder (``ViTMAEModel``, ``ViTMAEForPreTraining``: facebook/vit-mae-*), its encoder
read unmasked: vitreg runs every patch through it (mask ratio 0), as MAE's encoder is used after pretraining, and says
so in the model's source (transformers masks 75% at random unless its ``noise`` puts every patch first).

- recognised by: ``config.json`` with ``model_type`` ``vit_mae``; ViT's keys (``embeddings.patch_embeddings.projection``
  + ``layernorm_before``), under ``vit.`` in ``ViTMAEForPreTraining``, beside the ``decoder.*`` it drops;
- the architecture: every size in config.json, as for ViT; the preprocessing from ``preprocessor_config.json``, else
  ImageNet's statistics (facebook/vit-mae-* use them);
- onto timm: ViT's layout (:mod:`~vitreg.models.load.formats.hf_vit`): the fixed sine-cosine position table is read as
  weights, [CLS] has a position, ``last_hidden_state`` is after the final ``layernorm``. The decoder is not part of
  the backbone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitreg.models.load.formats.base import HUB_WEIGHTS, Format, Layout, StateDict
from vitreg.models.load.formats.hf_common import architectures
from vitreg.models.load.formats.hf_vit import is_bert_vit, vit_config, vit_to_timm
from vitreg.models.load.formats.resampling import TRANSFORMERS

if TYPE_CHECKING:
    import torch.nn as nn

    from vitreg.models.presets import ModelConfig

IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def encoder(sd: StateDict) -> StateDict:
    """The encoder's keys (``vit.`` stripped in ViTMAEForPreTraining), without the decoder."""
    if any(k.startswith("vit.") for k in sd):
        return {k[len("vit.") :]: v for k, v in sd.items() if k.startswith("vit.")}
    return {k: v for k, v in sd.items() if not k.startswith("decoder.")}


def recognise(sd: StateDict) -> bool:
    return any(k.startswith("decoder.decoder_embed") for k in sd) and is_bert_vit(encoder(sd))


def mae_to_timm(sd: StateDict, model: nn.Module) -> StateDict:
    return vit_to_timm(encoder(sd), model)


def read_config(cfg: dict[str, Any], folder: Path) -> ModelConfig:
    ratio = cfg.get("mask_ratio")
    source = (
        f"transformers {architectures(cfg, 'ViTMAEModel')}: the encoder, unmasked (mask ratio 0; pretrained with "
        f"{ratio!r})"
    )
    return vit_config(cfg, folder, "ViTMAE", source, IMAGENET_MEAN_STD, "ViTImageProcessor")


LAYOUT = Layout(name="transformers ViTMAE", recognise=recognise, to_timm=mae_to_timm)

FORMAT = Format(
    key="hf-vit-mae",
    preprocessing="its `preprocessor_config.json` (`ViTImageProcessor`: squashed, bilinear)",
    resampling=TRANSFORMERS.said,
    owner="transformers",
    what="a `transformers` ViTMAE folder (`ViTMAEModel`, `ViTMAEForPreTraining`: facebook/vit-mae-*; its encoder "
    "unmasked, mask ratio 0, said in the model's source)",
    command="vitreg diagnose --model hf:facebook/vit-mae-base --download --out runs/d",
    accepted="a transformers ViTMAEModel folder",
    recognised_by="config.json model_type vit_mae; ViT's keys (under vit. beside decoder.* in ViTMAEForPreTraining)",
    states_architecture="config.json: sizes, qkv_bias, hidden_act, layer_norm_eps (mask_ratio noted, not applied)",
    order=37,
    config_file="config.json",
    model_types=("vit_mae",),
    weight_files=HUB_WEIGHTS,
    read_config=read_config,
    layout=LAYOUT,
)
