"""Named ViT presets with N register tokens, built on timm's VisionTransformer (never a rewrite of it).

Registers follow the paper: learnable tokens appended after the patch embedding, initialised like [CLS]
(timm: normal, std 1e-6), without position embedding (``no_embed_class=True``), and discarded at the output.
``dynamic_img_size=True`` makes every model accept other resolutions, non-square included: timm then resamples
the position embedding bicubically with antialiasing (paper appendix A).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from dataclasses import dataclass, field
from typing import Any

import timm
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import GELUTanh, QuickGELU, SwiGLUPacked
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

from vitreg.errors import CheckpointError, ConfigError
from vitreg.models.processor import Processor, timm_processor
from vitreg.models.registers import BEIT_NO_REGISTERS

MAX_REGISTERS = 16
TIMM_PREFIX = "timm:"
ACTIVATIONS = ("gelu", "quick_gelu", "gelu_tanh")  # ModelConfig.act: exact GELU, CLIP's QuickGELU, tanh-approximated


@dataclass
class ModelConfig:
    """Everything needed to re-create a model: saved as JSON beside its weights."""

    spec: str  # preset name or "timm:<name>"
    registers: int = 0
    img_size: tuple[int, int] = (224, 224)
    patch_size: int = 16
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    mlp: str = "mlp"  # "mlp" | "swiglu" (DINOv2 giant)
    init_values: float | None = None  # LayerScale init; None = no LayerScale
    num_classes: int = 0
    global_pool: str = "token"  # "token" ([CLS] head) | "avg" (mean of patch tokens) | "map" (attention pooling)
    class_token: bool = True
    qkv_bias: bool = True
    drop_path_rate: float = 0.0
    mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, float, float] = IMAGENET_DEFAULT_STD
    timm_kwargs: dict[str, Any] = field(default_factory=dict)  # extra kwargs of a timm pass-through model
    # Layout details of converted checkpoints (OpenCLIP: a norm before the blocks, [CLS] in the position
    # embedding, eps 1e-5, QuickGELU for OpenAI's weights); the defaults are vitreg's own ViTs.
    pre_norm: bool = False
    no_embed_class: bool = True
    norm_eps: float = 1e-6
    act: str = "gelu"  # "gelu" | "quick_gelu" | "gelu_tanh" (SigLIP)
    dist_token: bool = False  # DeiT's distillation token after [CLS] (timm's VisionTransformerDistilled)
    source: str = ""  # the format the weights were converted from (e.g. "transformers Dinov2Model")
    # how the position table is resampled to another grid: its owner's way (models/load/formats/resampling.py)
    resampling: str = "timm"
    # how its owner's processor resizes and crops a photo (models/processor.py): the default of --resize model
    processor: Processor = field(default_factory=Processor)
    # Test-time registers (vitreg.models.ttr): extra untrained tokens after the registers, fed by these MLP units
    test_time_registers: int = 0
    register_neurons: list[tuple[int, int]] = field(default_factory=list)  # (block, hidden unit) pairs

    @property
    def is_timm(self) -> bool:
        return self.spec.startswith(TIMM_PREFIX)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["img_size"] = list(self.img_size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelConfig:
        """The config of a ``model.json``: every key checked by name and type (ConfigError naming it)."""
        from vitreg.config import from_dict

        if not isinstance(d, dict):
            raise ConfigError(f"expected a mapping of model config keys, got {type(d).__name__}")
        return from_dict(cls, d)

    def validate(self) -> None:
        self.processor.validate()
        if self.mlp not in ("mlp", "swiglu") or self.act not in ACTIVATIONS:
            raise ConfigError(
                f"unknown mlp {self.mlp!r} or act {self.act!r}; allowed: mlp, swiglu; {', '.join(ACTIVATIONS)}"
            )
        if self.dist_token and (self.registers or not self.class_token or self.global_pool != "token"):
            raise ConfigError("model config: a distillation token goes with [CLS], token pooling and no registers")
        sizes = dict(patch_size=self.patch_size, embed_dim=self.embed_dim, depth=self.depth, num_heads=self.num_heads)
        bad = [k for k, v in sizes.items() if v < 1]
        if bad or min(self.img_size) < 1 or not 0 <= self.registers <= MAX_REGISTERS:
            raise ConfigError(f"model config: {bad[0] if bad else 'img_size or registers'} out of range")
        ttr = self.test_time_registers
        if not 0 <= ttr <= MAX_REGISTERS or (self.register_neurons and not ttr):
            raise ConfigError("model config: register_neurons need test_time_registers between 1 and 16")
        if not self.is_timm and self.embed_dim % self.num_heads:
            raise ConfigError(
                f"model config: embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )


def _p(img: int, patch: int, dim: int, depth: int, heads: int, **kw: Any) -> dict[str, Any]:
    return dict(img_size=(img, img), patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads, **kw)


# Tiny CPU sizes first (they run in seconds on 2 cores), then the paper's Ti/S/B/L/H/g at patch 14 and 16.
# LayerScale follows DeiT-III (1e-4 for Ti/S/B, 1e-5 for L and larger; DINOv2 uses 1e-5 everywhere).
PRESETS: dict[str, dict[str, Any]] = {
    "vit_pico_patch4_32": _p(32, 4, 64, 2, 2),
    "vit_nano_patch4_32": _p(32, 4, 128, 6, 4),
    "vit_micro_patch8_64": _p(64, 8, 192, 12, 3),
}
for _size, (_dim, _depth, _heads, _ls) in {
    "tiny": (192, 12, 3, 1e-4),
    "small": (384, 12, 6, 1e-4),
    "base": (768, 12, 12, 1e-4),
    "large": (1024, 24, 16, 1e-5),
    "huge": (1280, 32, 16, 1e-5),
}.items():
    for _patch in (14, 16):
        PRESETS[f"vit_{_size}_patch{_patch}_224"] = _p(224, _patch, _dim, _depth, _heads, init_values=_ls)
for _patch in (14, 16):
    # DINOv2's ViT-g: width 1536, 40 blocks, SwiGLU FFN with 4096 hidden units (packed: 2 x 4096).
    PRESETS[f"vit_giant_patch{_patch}_224"] = _p(
        224, _patch, 1536, 40, 24, init_values=1e-5, mlp="swiglu", mlp_ratio=2.66667 * 2
    )

# Original DINOv2 hub names -> (timm architecture, the checkpoint file Meta published for it).
DINOV2_ALIASES: dict[str, tuple[str, str]] = {}
for _s, _n in {"s": "small", "b": "base", "l": "large", "g": "giant"}.items():
    DINOV2_ALIASES[f"dinov2_vit{_s}14"] = (f"vit_{_n}_patch14_dinov2", f"dinov2_vit{_s}14_pretrain.pth")
    DINOV2_ALIASES[f"dinov2_vit{_s}14_reg"] = (f"vit_{_n}_patch14_reg4_dinov2", f"dinov2_vit{_s}14_reg4_pretrain.pth")

_REG_SUFFIX = re.compile(r"^(?P<base>.+?)_reg(?P<n>\d+)$")


def parse_spec(spec: str) -> tuple[str, int | None]:
    """``vit_small_patch16_224_reg4`` -> (``vit_small_patch16_224``, 4); other names -> (name, None)."""
    if spec.startswith(TIMM_PREFIX) or spec in DINOV2_ALIASES:
        return spec, None
    m = _REG_SUFFIX.match(spec)
    if m and m.group("base") in PRESETS:
        return m.group("base"), int(m.group("n"))
    return spec, None


def _as_hw(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def _check_registers(n: int) -> int:
    if not 0 <= int(n) <= MAX_REGISTERS:
        raise ConfigError(f"registers must be between 0 and {MAX_REGISTERS}, got {n}")
    return int(n)


def model_config(
    spec: str,
    registers: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    **overrides: Any,
) -> ModelConfig:
    """Resolve a preset (or ``timm:NAME`` / DINOv2 alias) plus overrides into a ModelConfig."""
    name, suffix_regs = parse_spec(spec)
    if registers is None:
        registers = suffix_regs
    if name in DINOV2_ALIASES:
        name = TIMM_PREFIX + DINOV2_ALIASES[name][0]
    if name.startswith(TIMM_PREFIX):
        return _timm_config(name, registers, img_size, overrides)
    if name not in PRESETS:
        raise ConfigError(
            f"unknown model {spec!r}; presets: {', '.join(PRESETS)}; or a timm model as 'timm:NAME' "
            f"(e.g. timm:vit_small_patch14_reg4_dinov2); or a DINOv2 name ({', '.join(DINOV2_ALIASES)})"
        )
    kwargs: dict[str, Any] = dict(PRESETS[name])
    known = {f.name for f in dataclasses.fields(ModelConfig)} - {"spec"}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ConfigError(f"unknown model option {bad[0]!r}; allowed: {', '.join(sorted(known))}")
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    if img_size is not None:
        kwargs["img_size"] = img_size
    kwargs["img_size"] = _as_hw(kwargs["img_size"])
    kwargs["registers"] = _check_registers(registers or 0)
    return ModelConfig(spec=name, **kwargs)


def _is_eva(timm_name: str) -> bool:
    return timm.models.model_entrypoint(timm_name).__module__.endswith(".eva")


def _is_beit(timm_name: str) -> bool:
    """timm's Beit (BEiT, BEiT v2, data2vec-vision): relative position biases, a fixed input size, no registers."""
    return timm.models.model_entrypoint(timm_name).__module__.endswith(".beit")


def _timm_config(name: str, registers: int | None, img_size: Any, overrides: dict[str, Any]) -> ModelConfig:
    timm_name = name[len(TIMM_PREFIX) :]
    if not timm.is_model(timm_name):
        raise ConfigError(f"timm has no model named {timm_name!r} (timm {timm.__version__})")
    # Build once on the meta device to read the architecture without allocating weights.
    import torch
    from timm.models.beit import Beit
    from timm.models.eva import Eva

    extra = {k: v for k, v in overrides.items() if v is not None}
    num_classes = extra.pop("num_classes", None)
    with torch.device("meta"):
        try:
            probe = timm.create_model(timm_name, pretrained=False, **extra)
        except TypeError as err:
            raise ConfigError(f"timm:{timm_name} does not take {sorted(extra)}: {err}") from None
    if type(probe).__name__ == "VisionTransformerSAM":
        raise ConfigError(
            f"timm:{timm_name} is a VisionTransformerSAM: its blocks work on (B, H, W, C) windows with relative "
            "position biases and it has no prefix tokens, which the Inspector does not capture (not supported)"
        )
    if not isinstance(probe, VisionTransformer | Eva | Beit):
        raise ConfigError(
            f"{timm_name!r} is a {type(probe).__name__}, not a timm VisionTransformer, Eva (DINOv3) or Beit (BEiT)"
        )
    if isinstance(probe, Beit) and registers:
        raise ConfigError(f"timm:{timm_name}: {BEIT_NO_REGISTERS}")
    pcfg = dict(getattr(probe, "pretrained_cfg", {}) or {})
    distilled = getattr(probe, "dist_token", None) is not None  # DeiT's distillation token is no register
    own_regs = probe.num_prefix_tokens - (probe.cls_token is not None) - distilled
    regs = own_regs if registers is None else _check_registers(registers)
    hw = _as_hw(img_size) if img_size is not None else _as_hw(tuple(probe.patch_embed.img_size))
    num_classes = probe.num_classes if num_classes is None else num_classes
    vit: Any = probe  # timm's attributes are dynamic on nn.Module
    return ModelConfig(
        spec=name,
        registers=regs,
        img_size=hw,
        patch_size=int(vit.patch_embed.patch_size[0]),
        embed_dim=vit.embed_dim,
        depth=len(vit.blocks),
        num_heads=vit.blocks[0].attn.num_heads,
        num_classes=num_classes,
        global_pool=vit.global_pool,
        class_token=vit.cls_token is not None,
        mean=tuple(pcfg.get("mean", IMAGENET_DEFAULT_MEAN)),
        std=tuple(pcfg.get("std", IMAGENET_DEFAULT_STD)),
        timm_kwargs=extra,
        processor=timm_processor(pcfg, f"timm's pretrained_cfg of {timm_name}"),
    )


def build_model(cfg: ModelConfig) -> VisionTransformer:
    """Instantiate ``cfg`` with random weights (timm's own initialisation)."""
    model: Any
    if cfg.is_timm and _is_beit(cfg.spec[len(TIMM_PREFIX) :]):
        model = _build_beit(cfg)
    elif cfg.is_timm:
        name = cfg.spec[len(TIMM_PREFIX) :]
        # timm's Eva (DINOv3, EVA) names its register ("storage") tokens num_reg_tokens
        regs: dict[str, Any] = {"num_reg_tokens" if _is_eva(name) else "reg_tokens": cfg.registers}
        model = timm.create_model(name, pretrained=False, img_size=cfg.img_size, num_classes=cfg.num_classes,
                                  dynamic_img_size=True, **regs, **cfg.timm_kwargs)  # fmt: skip
    else:
        mlp_kwargs: dict[str, Any] = {}
        if cfg.mlp == "swiglu":
            mlp_kwargs = dict(mlp_layer=SwiGLUPacked, act_layer=nn.SiLU)
        elif cfg.act == "quick_gelu":
            mlp_kwargs = dict(act_layer=QuickGELU)
        elif cfg.act == "gelu_tanh":
            mlp_kwargs = dict(act_layer=GELUTanh)
        vit_class: Any = VisionTransformerDistilled if cfg.dist_token else VisionTransformer
        model = vit_class(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            init_values=cfg.init_values,
            num_classes=cfg.num_classes,
            global_pool=cfg.global_pool,  # checked by TrainConfig / timm
            class_token=cfg.class_token,
            qkv_bias=cfg.qkv_bias,
            drop_path_rate=cfg.drop_path_rate,
            reg_tokens=cfg.registers,
            no_embed_class=cfg.no_embed_class,
            pre_norm=cfg.pre_norm,
            norm_layer=functools.partial(nn.LayerNorm, eps=cfg.norm_eps),
            dynamic_img_size=True,
            **mlp_kwargs,
        )
    model.pretrained_cfg = {
        **(getattr(model, "pretrained_cfg", None) or {}),
        "mean": tuple(cfg.mean),
        "std": tuple(cfg.std),
        "input_size": (3, *cfg.img_size),
        "crop_pct": 1.0,
        "interpolation": "bicubic",
    }
    model.vitreg_config = cfg
    if cfg.test_time_registers:
        from vitreg.models.ttr import attach

        attach(model, cfg.register_neurons, cfg.test_time_registers)
    return typing.cast(VisionTransformer, model)


def _build_beit(cfg: ModelConfig) -> nn.Module:
    """timm's Beit for ``cfg``: its sizes and position flags in ``timm_kwargs`` (a transformers BEiT folder states them
    all; a ``timm:beit_*`` name takes timm's), the final norm's eps from ``norm_eps`` (transformers writes 1e-12,
    timm's own is 1e-6). Beit has no ``dynamic_img_size``: it reads images of its own size only (the Inspector says
    so), and no register tokens."""
    from timm.layers import LayerNorm

    if cfg.registers:
        raise ConfigError(f"{cfg.spec} with {cfg.registers} registers: {BEIT_NO_REGISTERS}")
    kwargs = {
        "global_pool": cfg.global_pool,
        "norm_layer": functools.partial(LayerNorm, eps=cfg.norm_eps),
        **cfg.timm_kwargs,
    }
    name = cfg.spec[len(TIMM_PREFIX) :]
    try:
        return timm.create_model(name, pretrained=False, img_size=cfg.img_size, num_classes=cfg.num_classes, **kwargs)
    except TypeError as err:  # a model.json edited by hand: a key timm's Beit does not take
        raise ConfigError(f"{cfg.spec}: timm's Beit does not take {sorted(cfg.timm_kwargs)}: {err}") from None


def config_of(model: nn.Module) -> ModelConfig:
    """The :class:`ModelConfig` a model built by vitreg carries (``model.vitreg_config``: its architecture, its
    preprocessing, its test-time registers); CheckpointError for a model built elsewhere."""
    cfg = getattr(model, "vitreg_config", None)
    if not isinstance(cfg, ModelConfig):
        raise CheckpointError("this model was not built by vitreg (no vitreg_config); build it with create_model")
    return cfg


def patch_size_of(model: nn.Module) -> tuple[int, int]:
    """A timm model's patch size (ph, pw), from its patch embedding (any timm ViT; vitreg's own or not)."""
    embed: Any = model.get_submodule("patch_embed")
    ph, pw = embed.patch_size
    return int(ph), int(pw)


def create_model(
    name: str,
    registers: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    **overrides: Any,
) -> VisionTransformer:
    """A randomly initialised ViT for preset ``name`` (or ``timm:NAME``) with ``registers`` register tokens.

    >>> m = create_model("vit_pico_patch4_32", registers=4)
    >>> m.num_prefix_tokens  # [CLS] + 4 registers
    5
    """
    return build_model(model_config(name, registers=registers, img_size=img_size, **overrides))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe_presets() -> list[dict[str, Any]]:
    """One row per preset: its architecture and parameter count (counted on the meta device, no allocation)."""
    import torch

    rows = []
    for name in PRESETS:
        cfg = model_config(name)
        with torch.device("meta"):
            n = count_parameters(build_model(cfg))
        rows.append(
            dict(
                name=name,
                img_size=cfg.img_size[0],
                patch=cfg.patch_size,
                depth=cfg.depth,
                width=cfg.embed_dim,
                heads=cfg.num_heads,
                params_m=round(n / 1e6, 3),
            )
        )
    return rows
