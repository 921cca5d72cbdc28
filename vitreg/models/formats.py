"""The checkpoint formats vitreg reads, and the architecture each one states.

A format is accepted only when its files determine the architecture: vitreg never guesses what the weights do not
say (the number of heads, the activation, the norm's epsilon). Folders:

- vitreg's own run directory: ``model.json`` + ``model.safetensors``;
- a Hugging Face ``transformers`` DINOv2 folder (``Dinov2Model``, ``Dinov2WithRegistersModel``): ``config.json``
  (``model_type`` dinov2 / dinov2_with_registers) + ``model.safetensors`` (or ``pytorch_model.bin``);
- a ``transformers`` CLIP folder (``CLIPVisionModel``, ``CLIPVisionModelWithProjection``, ``CLIPModel``: its vision
  tower): ``config.json`` (``model_type`` clip_vision_model / clip) + ``model.safetensors`` (:mod:`.hf_clip`);
- an OpenCLIP folder: ``open_clip_config.json`` + ``open_clip_model.safetensors`` (or ``open_clip_pytorch_model.bin``);
- a timm folder (as timm saves to the Hub): ``config.json`` naming its ``architecture`` + ``model.safetensors``.

Files: an ONNX export of a transformers CLIP vision tower (``.onnx``, fp32 or int8: :mod:`.onnx_clip`); a weights
file with a ``.json`` sidecar (vitreg's ``model.json`` fields), or any weights file together with a
named architecture (``--model ARCH --weights FILE``: a preset, ``timm:NAME``, a DINOv2 or OpenCLIP name). A bare file
is refused with the architectures its shapes fit.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from vitreg.errors import CheckpointError, ConfigError
from vitreg.models.hf_clip import CLIP_TYPES, clip_config, vision_section
from vitreg.models.presets import PRESETS, TIMM_PREFIX, ModelConfig

ACCEPTED = (
    "a vitreg run directory (model.json + model.safetensors); a transformers DINOv2 or CLIP folder (config.json + "
    "model.safetensors); an ONNX export of a transformers CLIP vision tower (.onnx); an OpenCLIP folder "
    "(open_clip_config.json + open_clip_model.safetensors); a timm folder "
    "(config.json with 'architecture' + model.safetensors); a weights file (.safetensors, weights-only .pth/.bin) with "
    "a .json sidecar or with --model ARCH naming its architecture (a preset, timm:NAME, a DINOv2 or OpenCLIP name)"
)
HF_DINOV2_TYPES = {"dinov2": "Dinov2Model", "dinov2_with_registers": "Dinov2WithRegistersModel"}

# OpenCLIP's ViT towers by name (open_clip's model configs; head width 64): width, layers, patch, image size.
OPENCLIP_ARCHS: dict[str, tuple[int, int, int, int]] = {
    "ViT-B-32": (768, 12, 32, 224),
    "ViT-B-16": (768, 12, 16, 224),
    "ViT-L-14": (1024, 24, 14, 224),
    "ViT-L-14-336": (1024, 24, 14, 336),
    "ViT-H-14": (1280, 32, 14, 224),
}
OPENCLIP_PREFIX = "openclip:"


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable JSON config ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _first(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def read_folder(folder: Path) -> tuple[ModelConfig, Path]:
    """The architecture a model folder states and its weights file; CheckpointError naming the accepted formats."""
    weights_names = ("model.safetensors", "pytorch_model.bin")
    if (folder / "model.json").is_file():
        weights = _first(folder, ("model.safetensors",))
        if weights is None:
            raise CheckpointError(f"{folder}: a vitreg model directory needs model.json and model.safetensors")
        return read_sidecar(folder / "model.json"), weights
    if (folder / "open_clip_config.json").is_file():
        weights = _first(folder, ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"))
        if weights is None:
            raise CheckpointError(f"{folder}: an OpenCLIP folder needs open_clip_model.safetensors (or .bin)")
        return openclip_folder_config(folder / "open_clip_config.json"), weights
    if (folder / "config.json").is_file():
        weights = _first(folder, weights_names)
        if weights is None:
            raise CheckpointError(f"{folder}: config.json without model.safetensors or pytorch_model.bin")
        cfg = _json(folder / "config.json")
        if cfg.get("model_type") in HF_DINOV2_TYPES:
            return hf_dinov2_config(cfg, folder), weights
        if cfg.get("model_type") in CLIP_TYPES:
            return hf_clip_folder_config(cfg, folder), weights
        if isinstance(cfg.get("architecture"), str):
            return timm_folder_config(cfg, folder), weights
        raise CheckpointError(
            f"{folder / 'config.json'}: model_type {cfg.get('model_type')!r} is not one vitreg reads; accepted: "
            f"{ACCEPTED}"
        )
    raise CheckpointError(f"{folder}: not a model folder vitreg reads; accepted: {ACCEPTED}")


def read_sidecar(path: Path) -> ModelConfig:
    # every value checked against its type and range, and the architecture built on the meta device, so a hostile
    # sidecar ("depth": "twelve") is a CheckpointError naming the file and key, never a traceback from timm
    from vitreg.models.sidecar import read_model_config

    return read_model_config(path)


def hf_dinov2_config(cfg: dict[str, Any], folder: Path) -> ModelConfig:
    """A transformers DINOv2 config.json -> the timm ViT it is (every size is in the file)."""
    where = folder / "config.json"
    try:
        dim, depth, heads = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
        patch, size = int(cfg["patch_size"]), int(cfg["image_size"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: lacks a usable {err} for a DINOv2 model") from None
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{where}: hidden_act {cfg.get('hidden_act')!r} is not supported (gelu only)")
    swiglu = bool(cfg.get("use_swiglu_ffn", False))
    hidden = int(dim * float(cfg.get("mlp_ratio", 4)))
    if swiglu:  # transformers' Dinov2SwiGLUFFN: 2/3 of the width, rounded up to a multiple of 8, packed as two halves
        hidden = 2 * ((int(hidden * 2 / 3) + 7) // 8 * 8)
    pre = _json(folder / "preprocessor_config.json") if (folder / "preprocessor_config.json").is_file() else {}
    extra: dict[str, Any] = {
        k: tuple(pre[v]) for k, v in (("mean", "image_mean"), ("std", "image_std")) if isinstance(pre.get(v), list)
    }
    return ModelConfig(
        spec=f"hf:{folder.name}",
        registers=int(cfg.get("num_register_tokens", 0)),
        img_size=(size, size),
        patch_size=patch,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=hidden / dim,
        mlp="swiglu" if swiglu else "mlp",
        init_values=float(cfg.get("layerscale_value", 1.0)),
        qkv_bias=bool(cfg.get("qkv_bias", True)),
        norm_eps=float(cfg.get("layer_norm_eps", 1e-6)),
        source=f"transformers {HF_DINOV2_TYPES[cfg['model_type']]}",
        **extra,
    )


def hf_clip_folder_config(cfg: dict[str, Any], folder: Path) -> ModelConfig:
    """A transformers CLIP config.json (a vision tower, or a whole CLIPModel's ``vision_config``) -> its timm ViT."""
    where = folder / "config.json"
    pre = _json(folder / "preprocessor_config.json") if (folder / "preprocessor_config.json").is_file() else {}
    named = cfg.get("architectures")
    kind = named[0] if isinstance(named, list) and named and str(named[0]).startswith("CLIP") else None
    kind = str(kind or CLIP_TYPES[cfg["model_type"]])
    return clip_config(vision_section(cfg, where), where, f"hf:{folder.name}", f"transformers {kind}", pre)


_ONNX_CONFIGS: dict[tuple, ModelConfig] = {}  # the file's and its preprocessor's (path, mtime, size) -> config


def onnx_config(path: Path) -> ModelConfig:
    """An ONNX export of a transformers CLIP vision tower -> its timm ViT (every size read from the graph). The graph
    is parsed once per file version: checking a model and loading it read the same config."""
    import copy

    pre = path.parent / "preprocessor_config.json"
    key = tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in (path, pre) if p.is_file())
    if key not in _ONNX_CONFIGS:
        _ONNX_CONFIGS.clear()  # one file at a time: configs are small, but a long session sees many files
        _ONNX_CONFIGS[key] = _read_onnx_config(path)
    return copy.deepcopy(_ONNX_CONFIGS[key])


def _read_onnx_config(path: Path) -> ModelConfig:
    from vitreg.models.onnx_clip import preprocessor_beside, read_onnx_clip

    graph = read_onnx_clip(path)
    pre, where = preprocessor_beside(path)
    kind = f"int8 ({len(graph.quantized)} tensors dequantised)" if graph.quantized else "fp32"
    return clip_config(graph.config, path, f"onnx:{path.name}", f"ONNX export of a transformers CLIP vision tower, "
                       f"{kind}; {where}", pre)  # fmt: skip


def openclip_config(name: str, vision: dict[str, Any], quick_gelu: bool, source: str) -> ModelConfig:
    """An OpenCLIP ViT tower (its ``vision_cfg``) -> timm's CLIP layout: a norm before the blocks, [CLS] in the
    position embedding, LayerNorm eps 1e-5, heads = width / head_width."""
    unsupported = [
        k for k in ("timm_model_name", "attentional_pool", "no_ln_pre", "final_ln_after_pool") if vision.get(k)
    ]
    if (
        unsupported
        or vision.get("pool_type", "tok") != "tok"
        or vision.get("pos_embed_type", "learnable") != "learnable"
    ):
        raise CheckpointError(f"{source}: this OpenCLIP tower variant is not supported ({unsupported or 'pooling'})")
    width, layers = int(vision.get("width", 768)), int(vision.get("layers", 12))
    head_width, size = int(vision.get("head_width", 64)), vision.get("image_size", 224)
    size = (int(size), int(size)) if isinstance(size, int | float) else (int(size[0]), int(size[1]))
    ls = vision.get("ls_init_value")
    return ModelConfig(
        spec=name,
        img_size=size,
        patch_size=int(vision.get("patch_size", 16)),
        embed_dim=width,
        depth=layers,
        num_heads=width // head_width,
        mlp_ratio=float(vision.get("mlp_ratio", 4.0)),
        init_values=None if ls is None else float(ls),
        pre_norm=True,
        no_embed_class=False,
        norm_eps=1e-5,
        act="quick_gelu" if quick_gelu else "gelu",
        mean=(0.48145466, 0.4578275, 0.40821073),  # OpenAI's CLIP statistics, which OpenCLIP keeps
        std=(0.26862954, 0.26130258, 0.27577711),
        source=source,
    )


def openclip_folder_config(path: Path) -> ModelConfig:
    data = _json(path)
    model_cfg = data.get("model_cfg", data)
    vision = model_cfg.get("vision_cfg") if isinstance(model_cfg, dict) else None
    if not isinstance(vision, dict):
        raise CheckpointError(f"{path}: no model_cfg.vision_cfg (not an OpenCLIP config)")
    cfg = openclip_config(f"openclip:{path.parent.name}", vision, bool(model_cfg.get("quick_gelu")), "OpenCLIP")
    pre = data.get("preprocess_cfg") or {}
    if isinstance(pre.get("mean"), list) and isinstance(pre.get("std"), list):
        cfg.mean, cfg.std = tuple(pre["mean"]), tuple(pre["std"])
    return cfg


def openclip_named_config(spec: str) -> ModelConfig:
    """``openclip:ViT-B-16`` (``-quickgelu`` for OpenAI's weights) -> its architecture."""
    name = spec[len(OPENCLIP_PREFIX) :]
    quick = name.endswith("-quickgelu")
    arch = OPENCLIP_ARCHS.get(name.removesuffix("-quickgelu"))
    if arch is None:
        raise ConfigError(f"unknown OpenCLIP architecture {name!r}; known: {', '.join(OPENCLIP_ARCHS)} (+ -quickgelu)")
    width, layers, patch, size = arch
    vision = dict(width=width, layers=layers, patch_size=patch, image_size=size)
    return openclip_config(spec, vision, quick, f"OpenCLIP {name}")


def timm_folder_config(cfg: dict[str, Any], folder: Path) -> ModelConfig:
    from vitreg.models.presets import model_config

    args = {k: v for k, v in (cfg.get("model_args") or {}).items() if k not in ("num_classes", "in_chans")}
    size = args.pop("img_size", None)
    args.pop("global_pool", None)
    try:
        out = model_config(TIMM_PREFIX + cfg["architecture"], img_size=tuple(size) if size else None, **args)
    except ConfigError as err:
        raise CheckpointError(f"{folder / 'config.json'}: {err}") from None
    out.source = "timm"
    return out


def shape_summary(sd: dict[str, torch.Tensor]) -> str:
    """What the weights of a bare file say (and do not say) about their architecture, in words."""
    proj = next((v for k, v in sd.items() if k.endswith("patch_embed.proj.weight") or k.endswith("conv1.weight")), None)
    blocks = {int(m.group(1)) for k in sd if (m := re.search(r"(?:blocks|resblocks|layer)\.(\d+)\.", k))}
    if proj is None or not blocks:
        return "no ViT patch embedding or blocks found"
    return f"width {proj.shape[0]}, {max(blocks) + 1} blocks, patch {proj.shape[-1]}; the number of heads is not in it"


def candidates(sd: dict[str, torch.Tensor]) -> list[str]:
    """Named architectures whose width, depth and patch size fit ``sd`` (suggestions for --model)."""
    proj = sd.get("patch_embed.proj.weight")
    if proj is None:
        return []
    depth = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    from vitreg.models.presets import DINOV2_ALIASES

    out = [
        name
        for name, p in PRESETS.items()
        if p["embed_dim"] == proj.shape[0] and p["depth"] == depth and p["patch_size"] == proj.shape[-1]
    ]
    out += [a for a, (t, _) in DINOV2_ALIASES.items() if proj.shape[-1] == 14 and _dinov2_width(t) == proj.shape[0]]
    return out


def _dinov2_width(timm_name: str) -> int:
    return {"small": 384, "base": 768, "large": 1024, "giant": 1536}[timm_name.split("_")[1]]
