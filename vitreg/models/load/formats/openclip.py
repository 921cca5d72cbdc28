"""OpenCLIP: a folder (``open_clip_config.json`` + ``open_clip_model.safetensors``, as OpenCLIP saves to the Hub) or a
checkpoint file by architecture name (``openclip:ViT-B-16 --weights FILE``). Two kinds of image tower:

- OpenCLIP's own ViT (``visual.class_embedding``, ``visual.transformer.resblocks.N``): width, depth and patch size
  from ``vision_cfg`` (or the name), heads = width / ``head_width``, QuickGELU for OpenAI's weights (``quick_gelu``
  or a ``-quickgelu`` name); onto timm's CLIP layout by timm's own filter (a norm before the blocks, [CLS] in the
  position embedding, eps 1e-5). The projection to the joint embedding (``visual.proj``) is not part of the tower;
- a timm tower (``vision_cfg.timm_model_name``: SigLIP's ``vit_base_patch16_siglip_224``, ...): the timm model of that
  name with OpenCLIP's pooling (``timm_pool``), its keys under ``visual.trunk.``.

The preprocessing from ``preprocess_cfg``, else ``vision_cfg``'s ``image_mean`` / ``image_std``, else OpenAI's (what
OpenCLIP itself falls back to). Other tower variants (attentional pooling, no pre-norm, other position embeddings)
are refused, naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitreg.errors import CheckpointError, ConfigError
from vitreg.models.load.formats.base import Format, Layout, StateDict, mean_std, strip_prefix
from vitreg.models.load.formats.resampling import OPENCLIP, TIMM
from vitreg.models.load.formats.timm_folder import timm_filter
from vitreg.models.processor import Processor, from_pil_resample

if TYPE_CHECKING:
    import torch.nn as nn

    from vitreg.models.presets import ModelConfig

PREFIX = "openclip:"
# OpenCLIP's ViT towers by name (open_clip's model configs; head width 64): width, layers, patch, image size.
ARCHS: dict[str, tuple[int, int, int, int]] = {
    "ViT-B-32": (768, 12, 32, 224),
    "ViT-B-16": (768, 12, 16, 224),
    "ViT-L-14": (1024, 24, 14, 224),
    "ViT-L-14-336": (1024, 24, 14, 336),
    "ViT-H-14": (1280, 32, 14, 224),
}
OPENAI = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
UNSUPPORTED = ("attentional_pool", "no_ln_pre", "final_ln_after_pool")
WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def recognise(sd: StateDict) -> bool:
    return "visual.class_embedding" in sd or any(k.startswith("visual.trunk.") for k in sd)


def to_timm(sd: StateDict, model: nn.Module) -> StateDict:
    import torch.nn as nn

    how = OPENCLIP  # OpenCLIP's resize_pos_embed (timm's way, antialiased) ...
    if any(k.startswith("visual.trunk.") for k in sd):  # a timm tower: timm's own keys
        sd, how = strip_prefix(sd, "visual.trunk."), TIMM  # ... or, for a timm tower, timm's own
    out = timm_filter(sd, model, how)  # OpenCLIP's own ViT: timm converts visual.* itself
    # the projection to the joint embedding (timm makes visual.proj its head) is not part of the image tower
    keep_head = not isinstance(getattr(model, "head", None), nn.Identity)
    return {k: v for k, v in out.items() if keep_head or not k.startswith("head.")}


def tower_config(name: str, vision: dict[str, Any], quick_gelu: bool, source: str, where: str) -> ModelConfig:
    """An OpenCLIP image tower (its ``vision_cfg``) -> the timm ViT it is (errors name ``where``)."""
    from vitreg.models.presets import ModelConfig

    if vision.get("timm_model_name"):
        return _timm_tower(vision, source, where)
    bad = [k for k in UNSUPPORTED if vision.get(k)]
    if vision.get("pool_type", "tok") != "tok":
        bad.append(f"pool_type={vision.get('pool_type')}")
    if vision.get("pos_embed_type", "learnable") != "learnable":
        bad.append(f"pos_embed_type={vision.get('pos_embed_type')}")
    if bad:
        raise CheckpointError(f"{where}: this OpenCLIP tower variant is not supported ({', '.join(bad)})")
    try:
        width, layers = int(vision.get("width", 768)), int(vision.get("layers", 12))
        head_width, size = int(vision.get("head_width", 64)), vision.get("image_size", 224)
        hw = (int(size), int(size)) if isinstance(size, int | float) else (int(size[0]), int(size[1]))
        patch, ratio = int(vision.get("patch_size", 16)), float(vision.get("mlp_ratio", 4.0))
    except (TypeError, ValueError, IndexError) as err:
        raise CheckpointError(f"{where}: a vision_cfg size is not a number ({err})") from None
    if min(width, layers, head_width, patch, *hw) < 1 or width % head_width:
        raise CheckpointError(f"{where}: inconsistent vision_cfg sizes (width {width}, head_width {head_width})")
    ls = vision.get("ls_init_value")
    return ModelConfig(
        spec=name,
        img_size=hw,
        patch_size=patch,
        embed_dim=width,
        depth=layers,
        num_heads=width // head_width,
        mlp_ratio=ratio,
        init_values=None if ls is None else float(ls),
        pre_norm=True,
        no_embed_class=False,
        norm_eps=1e-5,
        act="quick_gelu" if quick_gelu else "gelu",
        mean=OPENAI[0],  # OpenAI's CLIP statistics, which OpenCLIP keeps
        std=OPENAI[1],
        source=source,
        processor=processor({}),
    )


def _timm_tower(vision: dict[str, Any], source: str, where: str) -> ModelConfig:
    from vitreg.models.presets import TIMM_PREFIX, model_config

    pool = vision.get("timm_pool", "avg")
    if pool in ("abs_attn", "rot_attn"):
        raise CheckpointError(f"{where}: timm_pool {pool!r} (a pooling of CNN feature maps) is not a ViT tower's")
    size = vision.get("image_size")
    overrides: dict[str, Any] = {"num_classes": 0, **({"global_pool": pool} if pool else {})}
    try:
        cfg = model_config(TIMM_PREFIX + str(vision["timm_model_name"]), img_size=size, **overrides)
    except (ConfigError, TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: vision_cfg.timm_model_name: {err}") from None
    cfg.source = f"{source} (timm tower {vision['timm_model_name']})"
    return cfg


def read_config(data: dict[str, Any], folder: Path) -> ModelConfig:
    path = folder / "open_clip_config.json"
    model_cfg = data.get("model_cfg", data)
    vision = model_cfg.get("vision_cfg") if isinstance(model_cfg, dict) else None
    if not isinstance(vision, dict):
        raise CheckpointError(f"{path}: no model_cfg.vision_cfg (not an OpenCLIP config)")
    cfg = tower_config(f"{PREFIX}{folder.name}", vision, bool(model_cfg.get("quick_gelu")), "OpenCLIP", str(path))
    pre = data.get("preprocess_cfg") or {}
    pre = pre if isinstance(pre, dict) else {}
    default = mean_std({"image_mean": vision.get("image_mean"), "image_std": vision.get("image_std")}, OPENAI)
    cfg.mean, cfg.std = mean_std({"image_mean": pre.get("mean"), "image_std": pre.get("std")}, default)
    cfg.processor = processor(pre)
    return cfg


def processor(pre: dict[str, Any]) -> Processor:
    """OpenCLIP's eval transform (``open_clip.image_transform``) for a ``preprocess_cfg``: ``resize_mode``
    "shortest" (its default: torchvision's Resize of the shorter side, then CenterCrop) or "squash"; "longest" (a
    resize that keeps the whole image, then a pad) is not followed: vitreg's squash, and the owner text says so."""
    mode = pre.get("resize_mode") or "shortest"
    interpolation = from_pil_resample(pre.get("interpolation"), "bicubic")
    if mode == "shortest":
        return Processor("shorter", 1.0, interpolation, "int", "round", "OpenCLIP (resize_mode shortest)")
    owner = "OpenCLIP (resize_mode squash)" if mode == "squash" else f"vitreg's squash (OpenCLIP's {mode!r} not read)"
    return Processor("squash", 1.0, interpolation, "int", "round", owner)


def read_name(spec: str, *, registers: int | None, img_size: Any, overrides: dict[str, Any]) -> ModelConfig:
    """``openclip:ViT-B-16`` (``-quickgelu`` for OpenAI's weights) -> its architecture (registers, image size and
    options are applied by the resolver, as for every format whose files fix the architecture)."""
    name = spec[len(PREFIX) :]
    quick = name.endswith("-quickgelu")
    arch = ARCHS.get(name.removesuffix("-quickgelu"))
    if arch is None:
        raise ConfigError(f"unknown OpenCLIP architecture {name!r}; known: {', '.join(ARCHS)} (+ -quickgelu)")
    width, layers, patch, size = arch
    vision = dict(width=width, layers=layers, patch_size=patch, image_size=size)
    return tower_config(spec, vision, quick, f"OpenCLIP {name}", spec)


LAYOUT = Layout(name="OpenCLIP", recognise=recognise, to_timm=to_timm)

FORMAT = Format(
    key="openclip",
    preprocessing="its `preprocess_cfg` (OpenCLIP's `resize_mode` shortest: shorter side, centre crop, bicubic)",
    resampling=OPENCLIP.said,
    owner="open_clip_torch",
    what="an OpenCLIP folder (`open_clip_config.json` + `open_clip_model.safetensors`; its own ViT or a timm tower "
    "such as SigLIP's), or its Hub repo; an OpenCLIP checkpoint file by architecture (`openclip:ViT-B-16`, "
    "`-quickgelu` for OpenAI's)",
    command="vitreg diagnose --model hf:laion/CLIP-ViT-B-16-laion2B-s34B-b88K --out runs/d",
    accepted="an OpenCLIP folder (open_clip_config.json + open_clip_model.safetensors) or openclip:ARCH --weights FILE",
    recognised_by="the openclip: prefix; open_clip_config.json in the folder; keys visual.class_embedding or "
    "visual.trunk.*",
    states_architecture="open_clip_config.json's vision_cfg (or the name): width, layers, patch, head_width, "
    "quick_gelu; or timm_model_name + timm_pool",
    order=40,
    prefix=PREFIX,
    config_file="open_clip_config.json",
    weight_files=WEIGHTS,
    read_config=read_config,
    read_name=read_name,
    layout=LAYOUT,
)
