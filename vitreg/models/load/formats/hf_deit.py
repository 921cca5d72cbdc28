"""A ``transformers`` DeiT folder (``DeiTModel``, ``DeiTForImageClassificationWithTeacher``: facebook/deit-*-distilled).
DeiT without distillation is published as ``ViTModel`` (:mod:`.hf_vit`).

DeiT's distillation token is a second prefix token after [CLS], with its own position: it is kept, as timm's
``VisionTransformerDistilled`` keeps it (``dist_token``, two prefix tokens), and the Inspector counts it as a prefix
token of its own (``TokenLayout.distilled``: neither a register nor a patch; attention rows name it ``dist``).

- recognised by: ``config.json`` with ``model_type`` ``deit``; ViT's keys plus ``embeddings.distillation_token``;
- the architecture: every size in config.json, as ViT's; the preprocessing from ``preprocessor_config.json``, else
  DeiTImageProcessor's (ImageNet's statistics);
- onto timm: ViT's layout with ``dist_token``; ``last_hidden_state`` is after the final ``layernorm``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitreg.models.load.formats.base import HUB_WEIGHTS, Format, Layout, StateDict
from vitreg.models.load.formats.hf_common import architectures
from vitreg.models.load.formats.hf_vit import backbone, is_bert_vit, vit_config, vit_to_timm
from vitreg.models.load.formats.resampling import TRANSFORMERS

if TYPE_CHECKING:
    from vitreg.models.presets import ModelConfig

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def recognise(sd: StateDict) -> bool:
    return is_bert_vit(sd) and "embeddings.distillation_token" in backbone(sd)


def read_config(cfg: dict[str, Any], folder: Path) -> ModelConfig:
    source = f"transformers {architectures(cfg, 'DeiTModel')} (its distillation token kept as a prefix token)"
    return vit_config(cfg, folder, "DeiT", source, IMAGENET, "DeiTImageProcessor", dist_token=True)


LAYOUT = Layout(name="transformers DeiT", recognise=recognise, to_timm=vit_to_timm)

FORMAT = Format(
    key="hf-deit",
    preprocessing="its `preprocessor_config.json` (`DeiTImageProcessor`: squashed to 256, the centre 224)",
    resampling=TRANSFORMERS.said,
    owner="transformers",
    what="a `transformers` DeiT folder (`DeiTModel`, `DeiTForImageClassificationWithTeacher`; the distillation "
    "token is kept as a prefix token of its own)",
    command="vitreg diagnose --model hf:facebook/deit-small-distilled-patch16-224 --download --out runs/d",
    accepted="a transformers DeiTModel folder",
    recognised_by="config.json model_type deit; ViT's keys + embeddings.distillation_token",
    states_architecture="config.json: sizes, qkv_bias, hidden_act, layer_norm_eps",
    order=37,
    config_file="config.json",
    model_types=("deit",),
    weight_files=HUB_WEIGHTS,
    read_config=read_config,
    layout=LAYOUT,
)
