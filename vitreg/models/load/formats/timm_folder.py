"""timm: any timm ViT by name (``timm:NAME``), and a timm folder as timm saves it for the Hub.

- recognised by: the ``timm:`` prefix; a folder whose ``config.json`` names its ``architecture`` (and has no
  transformers ``model_type``);
- the architecture: timm's own model definition of that name (built on the meta device to read its sizes), with the
  folder's ``model_args``; the preprocessing from the folder's ``pretrained_cfg`` (mean, std), which is the folder's
  own, not the name's default (a tag-less name's default can differ: MAE's folders say ImageNet's statistics, the
  bare name's default is 0.5);
- onto timm: the keys are timm's; timm's own ``checkpoint_filter_fn`` of the model's class converts what timm knows
  (OpenAI / OpenCLIP visual towers, DeiT-III originals' ``gamma_1``, DINOv3 originals' ``storage_tokens``) and
  resamples the position and patch embeddings. That filter is also the last step of every other layout.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitreg.errors import CheckpointError, ConfigError
from vitreg.models.load.formats.base import HUB_WEIGHTS, Format, Layout, StateDict, mean_std
from vitreg.models.load.formats.resampling import (
    TIMM,
    Resampling,
    named,
    resample_at_forward,
    resample_positions,
    resample_rel_pos,
)
from vitreg.models.processor import timm_processor

if TYPE_CHECKING:
    import torch.nn as nn

    from vitreg.models.presets import ModelConfig

PREFIX = "timm:"


def timm_filter(sd: StateDict, model: nn.Module, how: Resampling | None = None) -> StateDict:
    """timm's ``checkpoint_filter_fn`` of ``model``'s class (VisionTransformer, Eva or Beit): what timm converts itself,
    and the position / patch embeddings resampled to the model's grid; the position table the way ``how`` says, the
    format's owner's (None: the one the model's config names, timm's for a config that names none, as a vitreg run
    directory's model.json does), which ``model`` then also follows for inputs of another grid and its config
    records (so that a saved model keeps it). timm prints (to stdout) which parameters a DINOv3 original lacks; that
    is timm's own bookkeeping, not the user's business."""
    from timm.models import beit, eva, vision_transformer

    cfg = getattr(model, "vitreg_config", None)
    how = how if how is not None else named(cfg.resampling) if cfg is not None else TIMM
    if cfg is not None:
        cfg.resampling = how.key
    sd = resample_positions(sd, model, how)  # then timm's filter finds the table at the model's grid
    resample_at_forward(model, how)  # and inputs of another grid (LOST at full resolution) the same way

    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(model, beit.Beit):  # its relative position bias tables too: the owner's way, else timm's
            sd, tables = resample_rel_pos(sd, model, how)
            return {**beit.checkpoint_filter_fn(sd, model), **tables}
        if isinstance(model, eva.Eva):
            return eva.checkpoint_filter_fn(sd, model)
        return vision_transformer.checkpoint_filter_fn(sd, model, adapt_layer_scale=True)  # type: ignore[arg-type]


def read_name(spec: str, *, registers: int | None, img_size: Any, overrides: dict[str, Any]) -> ModelConfig:
    from vitreg.models.presets import model_config

    return model_config(spec, registers=registers, img_size=img_size, **overrides)


def read_config(cfg: dict[str, Any], folder: Path) -> ModelConfig:
    from vitreg.models.presets import model_config

    where = folder / "config.json"
    raw_args = cfg.get("model_args") or {}
    if not isinstance(raw_args, dict):
        raise CheckpointError(f"{where}: model_args must be an object")
    args = {k: v for k, v in raw_args.items() if k not in ("num_classes", "in_chans", "global_pool")}
    size = args.pop("img_size", None)
    try:
        out = model_config(PREFIX + str(cfg["architecture"]), img_size=tuple(size) if size else None, **args)
    except ConfigError as err:
        raise CheckpointError(f"{where}: {err}") from None
    pcfg = cfg.get("pretrained_cfg")
    if isinstance(pcfg, dict):  # the folder's own preprocessing, whatever the bare name's default says
        own = {"image_mean": pcfg.get("mean"), "image_std": pcfg.get("std")}
        out.mean, out.std = mean_std(own, (out.mean, out.std))
        out.processor = timm_processor(pcfg, "timm's pretrained_cfg in the folder's config.json")
    out.source = "timm"
    return out


def _claims(cfg: dict[str, Any]) -> bool:
    return isinstance(cfg.get("architecture"), str) and "model_type" not in cfg


LAYOUT = Layout(name="timm", recognise=lambda sd: True, to_timm=timm_filter)

FORMAT = Format(
    key="timm",
    preprocessing="its `pretrained_cfg` (timm's eval transform: `crop_pct`, `crop_mode`, interpolation)",
    resampling=TIMM.said,
    owner="timm",
    what="any timm ViT by name (weights from the HF cache), or a timm folder (`config.json` naming its "
    "`architecture` + `model.safetensors`); an original DeiT-III `.pth` (`blocks.N.gamma_1`) with its timm name",
    command="vitreg inspect --model timm:vit_small_patch14_reg4_dinov2",
    accepted="a timm folder (config.json with 'architecture' + model.safetensors) or timm:NAME",
    recognised_by="the timm: prefix; a folder's config.json with 'architecture' and no 'model_type'",
    states_architecture="timm's model definition of the name, with the folder's model_args and pretrained_cfg",
    order=90,
    prefix=PREFIX,
    config_file="config.json",
    claims=_claims,
    weight_files=HUB_WEIGHTS,
    read_config=read_config,
    read_name=read_name,
    name_options=True,
    layout=LAYOUT,
)
