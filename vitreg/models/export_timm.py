"""A model written back out as a timm folder (``config.json`` + ``model.safetensors``, timm's own ``save_for_hf``)
that ``timm.create_model("local-dir:DIR", pretrained=True)`` loads with no vitreg installed: a released model with
registers distilled into it, a vitreg preset, any timm ViT vitreg loaded.

timm rebuilds a model from an architecture name and keyword arguments, so the export needs a timm architecture whose
blocks are this model's: a ``timm:`` model is its own; a model vitreg built from a ModelConfig (a converted CLIP,
OpenCLIP, DINOv2, a preset) is matched against the timm entry points of its width, depth and patch (the plain,
CLIP-QuickGELU and CLIP flavours), each built on the meta device with the config's sizes and compared module by
module (every parameter's name and shape, the activation and the LayerNorm epsilon). The folder written is then
loaded by timm and its tokens compared with the model's: any difference above 1e-5 is refused, the folder removed.

Registers that are plain tokens (``reg_token``) are timm's ``reg_tokens``; test-time registers (MLP hooks), DeiT's
distillation token and SwiGLU MLPs are not expressible as timm keyword arguments and are refused, saying why.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from vitreg.errors import ConfigError

TOL = 1e-5
#: timm entry points of each flavour of ViT block (their sizes are overridden by the model's own): plain (GELU, eps
#: 1e-6), OpenAI CLIP's (QuickGELU, eps 1e-5, a norm before the blocks), OpenCLIP's (GELU, eps 1e-5)
CANDIDATES = ("vit_base_patch16_224", "vit_base_patch16_clip_quickgelu_224", "vit_base_patch16_clip_224")


def _signature(model: nn.Module) -> tuple[dict[str, tuple[int, ...]], list[str], list[float]]:
    """Parameter shapes, activation classes and LayerNorm epsilons: what must agree for two ViTs to be the same."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith(("head.", "fc_norm."))}
    acts = sorted({type(m.act).__name__ for m in model.modules() if hasattr(m, "act") and isinstance(m.act, nn.Module)})
    eps = sorted({float(m.eps) for m in model.modules() if isinstance(m, nn.LayerNorm)})
    return shapes, acts, eps


def timm_architecture(model: nn.Module) -> tuple[str, dict[str, Any]]:
    """(timm architecture, keyword arguments) that build ``model``'s structure; ConfigError when none does."""
    import timm

    from vitreg.models.presets import TIMM_PREFIX, config_of

    cfg = config_of(model)
    vit: Any = model
    if cfg.test_time_registers:
        raise ConfigError(
            "--to timm: test-time registers are hooks on the MLPs, which a timm folder cannot hold; "
            "export to ONNX, or distil registers into the model (`vitreg fix --method distill`)"
        )
    if cfg.dist_token or cfg.mlp == "swiglu":
        raise ConfigError(
            "--to timm: DeiT's distillation token and SwiGLU MLPs are not timm VisionTransformer "
            "keyword arguments; this model cannot be written as a timm folder"
        )
    size = list(cfg.img_size)
    if cfg.is_timm:
        name = cfg.spec[len(TIMM_PREFIX) :]
        regs = "num_reg_tokens" if not hasattr(vit, "no_embed_class") else "reg_tokens"
        return name, {regs: cfg.registers, "img_size": size, "num_classes": cfg.num_classes, **cfg.timm_kwargs}
    args: dict[str, Any] = {
        "img_size": size,
        "num_classes": cfg.num_classes,
        "reg_tokens": cfg.registers,
        "class_token": cfg.class_token,
        "global_pool": cfg.global_pool,
        "no_embed_class": cfg.no_embed_class,
        "qkv_bias": cfg.qkv_bias,
        "mlp_ratio": cfg.mlp_ratio,
        "init_values": cfg.init_values,
        "pre_norm": cfg.pre_norm,
        "embed_dim": cfg.embed_dim,
        "depth": cfg.depth,
        "num_heads": cfg.num_heads,
        "patch_size": cfg.patch_size,
    }
    want = _signature(model)
    for name in CANDIDATES:
        with torch.device("meta"):
            candidate = timm.create_model(name, pretrained=False, **args)
        if _signature(candidate) == want:
            return name, args
    raise ConfigError(
        f"--to timm: no timm architecture builds this model's blocks (tried {', '.join(CANDIDATES)}: another "
        "activation, LayerNorm epsilon or layout)"
    )


def export_timm(model: nn.Module, out: Path) -> tuple[str, float]:
    """Write ``model`` as a timm folder in ``out``, load it back with timm alone and compare its tokens; returns
    (architecture, largest difference). ConfigError (the folder removed) when timm does not give the same tokens."""
    import timm
    from timm.models import save_for_hf

    from vitreg.models.presets import config_of

    name, args = timm_architecture(model)
    cfg = config_of(model)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty: give a new folder for the timm export")
    model = model.eval()
    ours: Any = model
    pretrained_cfg = {
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "input_size": [3, *cfg.img_size],
        "num_classes": cfg.num_classes,
        "notes": [f"exported by vitreg from {cfg.spec}: {cfg.source or 'vitreg'}"],
    }
    # timm's own model of that name and arguments holds the weights (timm's writer reads what it records itself)
    target = timm.create_model(name, pretrained=False, **args).eval()
    sd = {k: v for k, v in model.state_dict().items() if k in target.state_dict()}
    missing, _ = target.load_state_dict(sd, strict=False)
    if missing:
        raise ConfigError(f"--to timm: timm's {name} has tensors this model lacks ({', '.join(missing[:3])})")
    save_for_hf(
        target, str(out), model_config={"pretrained_cfg": pretrained_cfg}, model_args=args, safe_serialization=True
    )
    try:
        back: Any = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
        x = torch.randn(2, 3, *cfg.img_size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            diff = float((back.forward_features(x) - ours.forward_features(x)).abs().max())
    except Exception as err:  # timm raises many types for a folder it cannot build
        shutil.rmtree(out, ignore_errors=True)
        raise ConfigError(f"--to timm: timm could not load the folder back ({type(err).__name__}: {err})") from None
    if not diff <= TOL:
        shutil.rmtree(out, ignore_errors=True)
        raise ConfigError(f"--to timm: timm's {name} gives other tokens (largest difference {diff:.2e} > {TOL})")
    return name, diff
