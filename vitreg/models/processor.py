"""How a model's own image processor prepares a photo: the geometry that comes before mean/std.

Every owner resizes and then crops the centre, but each rounds its own way, and a one-pixel shift is a different
input. :class:`Processor` states it exactly (``vitreg.data.transforms.ImageTransform`` carries it out):

- ``resize``: ``"shorter"`` (the shorter side to ``floor(size / crop_pct)``, the aspect ratio kept: CLIP's, DINOv2's,
  timm's ``crop_mode="center"``, torchvision's) or ``"squash"`` (each side to ``floor(size / crop_pct)``: ViT's and
  SigLIP's processors, DeiT's 256 then 224, timm's ``crop_mode="squash"``), then a centre crop of the model's size;
- ``long_side``: the longer side of a ``"shorter"`` resize, ``"int"`` (truncated: torchvision, timm, transformers) or
  ``"round"`` (some applications' own code);
- ``crop_offset``: the crop's top-left corner, ``"round"`` (torchvision's ``CenterCrop``: timm, OpenCLIP, DINOv2) or
  ``"floor"`` (transformers' ``center_crop``: ``(H - h) // 2``);
- ``interpolation``: the resampling filter (PIL's, by name).

vitreg's own models are squashed to their size (``Processor()``, owner "vitreg"), as the artifact papers' fixed-size
inputs are.
Light: no torch, no PIL (the formats registry reads it for ``--help``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vitreg.errors import ConfigError

__all__ = [
    "HF_DEFAULTS",
    "INTERPOLATIONS",
    "RESIZES",
    "Processor",
    "check_resize",
    "from_pil_resample",
    "hf_processor",
    "timm_processor",
]

INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos")
#: ``--resize``: the model's own processor, or one of vitreg's geometries by name (data/transforms.py carries them out)
RESIZES: tuple[str, ...] = ("model", "squash", "crop", "keep-aspect")
# PIL's Image.Resampling numbers, as transformers' preprocessor_config.json writes them ("resample": 3)
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
_SHORT_224 = {"size": {"shortest_edge": 224}, "do_center_crop": True, "crop_size": {"height": 224, "width": 224}}
#: transformers' image processor classes' own defaults (transformers 5.24), for a folder whose
#: preprocessor_config.json is absent or silent on a key (the class fills it in the same way)
HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "CLIPImageProcessor": {**_SHORT_224, "resample": 3},
    "BitImageProcessor": {**_SHORT_224, "resample": 3},  # DINOv2's (facebook/dinov2-*: shortest edge 256)
    "ViTImageProcessor": {"size": {"height": 224, "width": 224}, "do_center_crop": False, "resample": 2},
    "DeiTImageProcessor": {
        "size": {"height": 256, "width": 256},
        "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224},
        "resample": 3,
    },
    "SiglipImageProcessor": {"size": {"height": 224, "width": 224}, "do_center_crop": False, "resample": 3},
    "DINOv3ViTImageProcessor": {"size": {"height": 224, "width": 224}, "do_center_crop": False, "resample": 2},
    "Siglip2ImageProcessor": {"size": None, "resample": 2},  # NaFlex: a patch budget, not a size
    "BeitImageProcessor": {"size": {"height": 224, "width": 224}, "do_center_crop": False, "resample": 3},
}


def check_resize(value: str, size_key: str) -> None:
    """ConfigError naming ``value`` unless it is one of :data:`RESIZES`; a number (an earlier ``--resize S``) gets the
    hint that S x S is ``squash`` with ``size_key`` (LOST's ``size``, a model's ``img_size``) set to it."""
    if value in RESIZES:
        return
    hint = f" (S x S is resize 'squash' with {size_key} {value})" if str(value).isdigit() else ""
    raise ConfigError(f"--resize {value!r} is not one of {', '.join(RESIZES)}{hint}")


@dataclass(frozen=True)
class Processor:
    """The resize-and-crop of a model's own processor (see the module docstring); ``owner`` says whose, in words."""

    resize: str = "squash"  # "squash" | "shorter"
    crop_pct: float = 1.0  # crop size / resize size (1: the resize is the crop)
    interpolation: str = "bicubic"
    long_side: str = "int"  # "int" | "round"
    crop_offset: str = "round"  # "round" | "floor"
    owner: str = "vitreg"

    def validate(self) -> None:
        bad = {
            "resize": self.resize not in ("squash", "shorter"),
            "long_side": self.long_side not in ("int", "round"),
            "crop_offset": self.crop_offset not in ("round", "floor"),
            "interpolation": self.interpolation not in INTERPOLATIONS,
            "crop_pct": not 0 < self.crop_pct <= 1,
        }
        wrong = [k for k, v in bad.items() if v]
        if wrong:
            raise ConfigError(f"model config: processor.{wrong[0]} {getattr(self, wrong[0])!r} is not allowed")


def from_pil_resample(value: Any, default: str) -> str:
    """A ``resample`` of a preprocessor config (PIL's number, or a name) as an interpolation name."""
    if isinstance(value, str) and value.lower() in INTERPOLATIONS:
        return value.lower()
    if isinstance(value, int) and not isinstance(value, bool):
        return _PIL_RESAMPLE.get(value, default)
    return default


def _side(size: Any) -> tuple[str, int] | None:
    """``size`` of a transformers processor: ("shorter", S) for ``{"shortest_edge": S}``, ("squash", S) for a square
    ``{"height": S, "width": S}`` or an int; None for anything else (a non-square size, or none)."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return "squash", size
    if isinstance(size, dict):
        if isinstance(size.get("shortest_edge"), int) and size["shortest_edge"] > 0:
            return "shorter", int(size["shortest_edge"])
        h, w = size.get("height"), size.get("width")
        if isinstance(h, int) and h == w and h > 0:
            return "squash", int(h)
    return None


def hf_processor(pre: dict[str, Any], name: str) -> tuple[Processor, int | None]:
    """The :class:`Processor` of a transformers ``preprocessor_config.json`` (``pre``; keys missing from it are taken
    from :data:`HF_DEFAULTS` of the class ``name``) and the crop size ``pre`` itself states (the model's input side;
    None: ``pre`` states no size, the class's default size is not the model's). transformers truncates the longer
    side and floors the crop offset. A size this cannot state (a non-square resize, a patch budget) falls back to
    vitreg's squash, said in ``owner``."""
    merged = {**HF_DEFAULTS.get(name, {}), **{k: v for k, v in pre.items() if v is not None}}
    interpolation = from_pil_resample(merged.get("resample"), "bicubic")
    side = _side(merged.get("size")) if merged.get("do_resize", True) else None
    if side is None:
        return Processor(interpolation=interpolation, owner=f"vitreg's squash ({name}'s size not followed)"), None
    how, size = side
    crop = _side(merged.get("crop_size")) if merged.get("do_center_crop") else None
    out = crop[1] if crop is not None else size
    if out > size:
        return Processor(interpolation=interpolation, owner=f"vitreg's squash ({name} crops past its resize)"), None
    stated = "its preprocessor_config.json" if pre else "its defaults: no preprocessor_config.json"
    proc = Processor(how, out / size, interpolation, "int", "floor", f"transformers {name}, {stated}")
    states = pre.get("crop_size" if merged.get("do_center_crop") else "size") is not None
    return proc, out if states else None


def timm_processor(cfg: dict[str, Any], owner: str) -> Processor:
    """The :class:`Processor` of a timm ``pretrained_cfg`` (``crop_pct``, ``crop_mode``, ``interpolation``): timm's
    eval transform, torchvision's Resize and CenterCrop underneath. ``crop_mode="border"`` (a resize that keeps the
    whole image, then a pad) is not one of vitreg's geometries: the centre crop is used and ``owner`` says so."""
    pct = cfg.get("crop_pct")
    crop_pct = float(pct) if isinstance(pct, int | float) and 0 < pct <= 1 else 0.875  # timm's DEFAULT_CROP_PCT
    mode = cfg.get("crop_mode") or "center"
    interpolation = from_pil_resample(cfg.get("interpolation"), "bicubic")
    if mode == "squash":
        return Processor("squash", crop_pct, interpolation, "int", "round", owner)
    if mode != "center":
        owner = f"{owner}; its crop_mode {mode!r} read as 'center'"
    return Processor("shorter", crop_pct, interpolation, "int", "round", owner)
