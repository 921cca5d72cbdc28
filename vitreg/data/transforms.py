"""Image -> normalised tensor transforms whose geometry is explicit, so boxes and masks can follow the image.

Every mode is "resize to (rw, rh), then crop a window": :meth:`ImageTransform.geometry` returns that pair, and
:meth:`ImageTransform.map_boxes` / :meth:`ImageTransform.map_mask` apply the same mapping to annotations. Coordinates
are continuous pixel-edge coordinates: pixel (row i, col j) covers [j, j + 1) x [i, i + 1), so a box ``x1, y1, x2, y2``
with exclusive right/bottom edges scales by simple multiplication.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from vitreg.models.processor import RESIZES, Processor, timm_processor

__all__ = [
    "DEFAULT_CROP_PCT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RESIZES",
    "Geometry",
    "ImageTransform",
    "denormalize",
    "processor_of",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# timm's default when a model's pretrained_cfg gives no crop_pct (center_crop mode only).
DEFAULT_CROP_PCT = 0.875

Mode = Literal["resize", "center_crop", "letterbox", "patch_crop", "patch_pad"]
MODES: tuple[str, ...] = ("resize", "center_crop", "letterbox", "patch_crop", "patch_pad")

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int | np.integer):
        pair = (int(value), int(value))
    else:
        items = tuple(int(v) for v in value)
        if len(items) != 2:
            raise ValueError(f"{name} must be an int or a pair, got {value!r}")
        pair = (items[0], items[1])
    if min(pair) <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return pair


@dataclass(frozen=True)
class Geometry:
    """Where an input image of ``orig_size`` lands: resized to ``resized`` then cropped to ``crop``.

    All sizes are (W, H) like PIL; ``crop`` is (left, top, right, bottom) in resized pixels.
    """

    orig_size: tuple[int, int]
    resized: tuple[int, int]
    crop: tuple[int, int, int, int]

    @property
    def out_size(self) -> tuple[int, int]:
        """(W, H) of the transformed image."""
        left, top, right, bottom = self.crop
        return right - left, bottom - top

    @property
    def scale(self) -> tuple[float, float]:
        """(sx, sy): resized / original size, per axis."""
        return self.resized[0] / self.orig_size[0], self.resized[1] / self.orig_size[1]


class ImageTransform:
    """PIL RGB image -> float tensor (3, H, W) normalised by ``mean``/``std``.

    Modes (``input_size`` is (H, W), or an int for a square):

    * ``"resize"``: resize to ``floor(input_size / crop_pct)`` per axis (aspect ratio not kept), then centre-crop
      ``input_size`` (crop_pct 1: no crop), like the artifact papers' fixed-size inputs, or DeiT's 256 then 224;
    * ``"center_crop"``: timm's eval transform: for a square size, resize the shorter side to
      ``floor(size / crop_pct)`` (aspect kept; the longer side truncated, or rounded with ``long_side="round"``), for a
      non-square size resize to ``floor(size / crop_pct)`` per axis, then center-crop ``input_size``;
    * ``"letterbox"``: the whole image, aspect kept: resized so that it fits ``input_size``, at the top-left, the
      rest padded with the mean colour (0 after normalisation), as LOST pads;
    * ``"patch_crop"``: keep the full resolution (optionally downscaled so the longer side is at most ``max_side``)
      and crop the top-left to the largest multiple of the patch size in each dimension, so any non-square image
      becomes a whole number of patches; ``input_size`` is ignored and batches have mixed shapes;
    * ``"patch_pad"``: LOST's own protocol: the same full resolution, padded at the right and bottom with the mean
      colour to the next multiple of the patch size instead of cropped.

    ``crop_offset``: where a centre crop starts, ``"round"`` (torchvision's ``CenterCrop``) or ``"floor"``
    (transformers'); ``owner``: whose processor this is, for :meth:`describe`
    (:class:`vitreg.models.processor.Processor` states each model's).
    """

    def __init__(
        self,
        input_size: int | Sequence[int] = (224, 224),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        mode: Mode = "resize",
        patch_size: int | Sequence[int] = 16,
        crop_pct: float = 1.0,
        interpolation: str = "bicubic",
        max_side: int | None = None,
        long_side: str = "int",
        crop_offset: str = "round",
        owner: str = "",
    ):
        if mode not in MODES:
            raise ValueError(f"unknown transform mode {mode!r}; expected one of {', '.join(MODES)}")
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        if interpolation not in _RESAMPLE:
            raise ValueError(f"unknown interpolation {interpolation!r}; expected one of {', '.join(_RESAMPLE)}")
        if long_side not in ("int", "round") or crop_offset not in ("round", "floor"):
            raise ValueError(f"unknown long_side {long_side!r} (int, round) or crop_offset {crop_offset!r}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values (std > 0), got mean={mean!r} std={std!r}")
        self.input_size: tuple[int, int] = _pair(input_size, "input_size")  # (H, W)
        self.mean: tuple[float, float, float] = (float(mean[0]), float(mean[1]), float(mean[2]))
        self.std: tuple[float, float, float] = (float(std[0]), float(std[1]), float(std[2]))
        self.mode: str = mode
        self.patch_size: tuple[int, int] = _pair(patch_size, "patch_size")  # (ph, pw)
        self.crop_pct = float(crop_pct)
        self.interpolation = interpolation
        self.max_side = max_side
        self.long_side = long_side
        self.crop_offset = crop_offset
        self.owner = owner

    @classmethod
    def from_model(
        cls,
        model: Any,
        mode: Mode = "resize",
        img_size: int | Sequence[int] | None = None,
        **overrides: Any,
    ) -> ImageTransform:
        """The transform a (timm-style) model expects.

        Reads ``model.pretrained_cfg`` ("mean", "std", "input_size" (3, H, W), optional "crop_pct", "interpolation")
        and ``model.patch_embed.patch_size``. The size is, in order of preference: ``img_size``, the size the model
        was built for (``model.patch_embed.img_size``, which can differ from the pretrained config when the model was
        created with another ``img_size``), ``pretrained_cfg["input_size"]``, then 224.
        """
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        patch_embed = getattr(model, "patch_embed", None)
        size: int | Sequence[int] | None = img_size
        if size is None and patch_embed is not None:
            built = getattr(patch_embed, "img_size", None)
            if built is not None and not isinstance(built, str):
                size = built
        if size is None and cfg.get("input_size") is not None:
            size = tuple(cfg["input_size"])[-2:]
        kwargs: dict[str, Any] = {
            "input_size": size if size is not None else 224,
            "mean": tuple(cfg.get("mean") or IMAGENET_MEAN),
            "std": tuple(cfg.get("std") or IMAGENET_STD),
            "mode": mode,
            "patch_size": getattr(patch_embed, "patch_size", None) or 16,
            "crop_pct": float(cfg.get("crop_pct") or DEFAULT_CROP_PCT) if mode == "center_crop" else 1.0,
        }
        if cfg.get("interpolation") in _RESAMPLE:
            kwargs["interpolation"] = cfg["interpolation"]
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def for_model(
        cls, model: Any, resize: str = "model", img_size: int | Sequence[int] | None = None
    ) -> ImageTransform:
        """How ``resize`` prepares images for ``model`` at its input size (or ``img_size``), with its mean and std:

        - ``"model"``: the model's own processor (:class:`~vitreg.models.processor.Processor`: ``ModelConfig.processor``
          for a model vitreg built, its timm ``pretrained_cfg`` for another), its interpolation included;
        - ``"squash"``: resized to the size, aspect ratio not kept (vitreg's own models, the artifact papers' inputs);
        - ``"crop"``: the shorter side resized to the size, the centre cropped (nothing padded, the sides lost);
        - ``"keep-aspect"``: the whole image resized to fit, padded with the mean colour (``"letterbox"``).

        The named geometries resample bicubic, as vitreg always has; the model's is said by :meth:`describe`."""
        if resize not in RESIZES:
            raise ValueError(f"unknown resize {resize!r}; expected one of {', '.join(RESIZES)}")
        base = cls.from_model(model, mode="resize", img_size=img_size, interpolation="bicubic")
        common: dict[str, Any] = dict(
            input_size=base.input_size, mean=base.mean, std=base.std, patch_size=base.patch_size
        )
        if resize == "squash":
            return cls(**common, mode="resize", owner="--resize squash")
        if resize == "crop":
            return cls(**common, mode="center_crop", owner="--resize crop")
        if resize == "keep-aspect":
            return cls(**common, mode="letterbox", owner="--resize keep-aspect")
        proc = processor_of(model)
        return cls(
            **common,
            mode="center_crop" if proc.resize == "shorter" else "resize",
            crop_pct=proc.crop_pct,
            interpolation=proc.interpolation,
            long_side=proc.long_side,
            crop_offset=proc.crop_offset,
            owner=f"as its processor does it ({proc.owner})",
        )

    def describe(self) -> str:
        """How an image is prepared, in words, for reports and result files: whose way, the geometry, the size, the
        interpolation and the normalisation (e.g. "as its processor does it (transformers CLIPImageProcessor, its
        preprocessor_config.json): shorter side resized to 224 (longer side truncated), centre crop 224x224 (offset
        floored), bicubic; mean (0.481, 0.458, 0.408), std (0.269, 0.261, 0.276)")."""
        h, w = self.input_size
        pct = self.crop_pct
        scaled = f"{math.floor(h / pct)}x{math.floor(w / pct)}"
        crop = f", centre crop {h}x{w} (offset {'floored' if self.crop_offset == 'floor' else 'rounded'})"
        if self.mode == "resize":
            how = f"squashed to {h}x{w} (aspect ratio not kept)" if pct == 1 else f"squashed to {scaled}{crop}"
        elif self.mode == "center_crop":
            longer = "rounded" if self.long_side == "round" else "truncated"
            side = f"shorter side resized to {math.floor(h / pct)} (longer side {longer})" if h == w else scaled
            how = f"{side}{crop}"
        elif self.mode == "letterbox":
            how = f"the whole image resized to fit {h}x{w} (aspect ratio kept), padded with the mean colour"
        else:
            ph, pw = self.patch_size
            most = f", longer side at most {self.max_side}" if self.max_side is not None else ""
            edge = "padded with the mean colour to" if self.mode == "patch_pad" else "cropped to"
            how = f"full resolution{most}, {edge} a multiple of the {ph}x{pw} patch"
        stats = ", ".join(f"{v:.3f}" for v in self.mean), ", ".join(f"{v:.3f}" for v in self.std)
        whose = f"{self.owner}: " if self.owner else ""
        return f"{whose}{how}, {self.interpolation}; mean ({stats[0]}), std ({stats[1]})"

    def __repr__(self) -> str:
        return (
            f"ImageTransform(input_size={self.input_size}, mode={self.mode!r}, patch_size={self.patch_size}, "
            f"crop_pct={self.crop_pct}, mean={self.mean}, std={self.std}, interpolation={self.interpolation!r}, "
            f"long_side={self.long_side!r}, crop_offset={self.crop_offset!r})"
        )

    # -- geometry ---------------------------------------------------------------------------------------------------

    def geometry(self, orig_size: Sequence[int]) -> Geometry:
        """Resize and crop applied to an image of ``orig_size`` = (W, H). A crop window larger than the resized image
        (``letterbox``, ``patch_pad``) is padding."""
        w, h = _pair(orig_size, "orig_size")
        out_h, out_w = self.input_size
        if self.mode == "resize":
            rw, rh = math.floor(out_w / self.crop_pct), math.floor(out_h / self.crop_pct)
            return self._centre((w, h), (rw, rh))
        if self.mode == "center_crop":
            scale_h, scale_w = math.floor(out_h / self.crop_pct), math.floor(out_w / self.crop_pct)
            if out_h == out_w:
                # torchvision Resize(int): shorter side -> scale, longer side truncated (int) to keep the aspect;
                # long_side="round" rounds it (short * (scale / short) is the scale itself)
                if w <= h:
                    rw, rh = scale_w, self._longer(scale_w, h, w)
                else:
                    rw, rh = self._longer(scale_h, w, h), scale_h
            else:
                rw, rh = scale_w, scale_h
            return self._centre((w, h), (max(rw, out_w), max(rh, out_h)))
        if self.mode == "letterbox":
            factor = min(out_w / w, out_h / h)
            rw, rh = min(out_w, max(1, round(w * factor))), min(out_h, max(1, round(h * factor)))
            return Geometry((w, h), (rw, rh), (0, 0, out_w, out_h))
        # patch_crop / patch_pad
        rw, rh = w, h
        if self.max_side is not None and max(w, h) > self.max_side:
            factor = self.max_side / max(w, h)
            rw, rh = max(1, round(w * factor)), max(1, round(h * factor))
        ph, pw = self.patch_size
        if self.mode == "patch_pad":
            return Geometry((w, h), (rw, rh), (0, 0, -(-rw // pw) * pw, -(-rh // ph) * ph))
        cw, ch = rw // pw * pw, rh // ph * ph
        if cw == 0 or ch == 0:
            raise ValueError(f"image of {w}x{h} pixels is smaller than one {pw}x{ph} patch")
        return Geometry((w, h), (rw, rh), (0, 0, cw, ch))

    def _longer(self, scale: int, long: int, short: int) -> int:
        if self.long_side == "round":
            return round(long * (scale / short))
        return int(scale * long / short)

    def _centre(self, orig: tuple[int, int], resized: tuple[int, int]) -> Geometry:
        """The centre ``input_size`` window of an image resized to ``resized`` = (W, H)."""
        out_h, out_w = self.input_size
        rw, rh = resized
        if self.crop_offset == "floor":
            left, top = (rw - out_w) // 2, (rh - out_h) // 2
        else:
            left, top = round((rw - out_w) / 2.0), round((rh - out_h) / 2.0)
        return Geometry(orig, resized, (left, top, left + out_w, top + out_h))

    def output_size(self, orig_size: Sequence[int]) -> tuple[int, int]:
        """(W, H) of the transformed image for an input of ``orig_size`` = (W, H)."""
        return self.geometry(orig_size).out_size

    # -- image ------------------------------------------------------------------------------------------------------

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """PIL image (converted to RGB if needed) -> float32 tensor (3, H, W), normalised."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        geo = self.geometry(img.size)
        if geo.resized != img.size:
            img = img.resize(geo.resized, resample=_RESAMPLE[self.interpolation])
        left, top, right, bottom = geo.crop
        pad = right > geo.resized[0] or bottom > geo.resized[1]
        if geo.crop != (0, 0, *geo.resized) and not pad:
            img = img.crop(geo.crop)
        arr: np.ndarray = np.asarray(img, dtype=np.float32)  # (H, W, 3) in 0..255
        arr = (arr * (1.0 / 255.0) - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if pad:  # the resized image at the top-left, the rest the mean colour (0 once normalised), as LOST pads
            canvas = np.zeros((bottom - top, right - left, 3), np.float32)
            canvas[: arr.shape[0], : arr.shape[1]] = arr
            arr = canvas
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def denormalize(self, tensor: torch.Tensor | np.ndarray) -> np.ndarray:
        """Inverse of the normalisation: (3, H, W) tensor -> uint8 (H, W, 3) array for drawing."""
        return denormalize(tensor, self.mean, self.std)

    # -- annotations ------------------------------------------------------------------------------------------------

    def map_boxes(self, boxes: np.ndarray | Sequence[Sequence[float]], orig_size: Sequence[int]) -> np.ndarray:
        """Map (K, 4) xyxy boxes in original pixel coordinates to the transformed image's, clipped to it.

        Returns float32 (K, 4); rows keep their order, and a box cropped away entirely becomes zero-area (callers drop
        those with ``(x2 > x1) & (y2 > y1)``).
        """
        geo = self.geometry(orig_size)
        arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        sx, sy = geo.scale
        left, top, _, _ = geo.crop
        out_w, out_h = geo.out_size
        mapped = arr * np.array([sx, sy, sx, sy]) - np.array([left, top, left, top])
        mapped[:, 0::2] = np.clip(mapped[:, 0::2], 0, out_w)
        mapped[:, 1::2] = np.clip(mapped[:, 1::2], 0, out_h)
        return mapped.astype(np.float32)

    def map_mask(
        self, mask: np.ndarray | Image.Image, orig_size: Sequence[int] | None = None, fill: float = 0
    ) -> np.ndarray:
        """Map a (H, W) label/instance/depth map to the transformed image's pixels with nearest-neighbour sampling.

        ``orig_size`` (W, H) defaults to the mask's own size and must match it. The dtype is kept, so class ids are
        never blended; padded pixels (``letterbox``, ``patch_pad``) get ``fill``. Returns a new (H_out, W_out) array.
        """
        arr = np.asarray(mask)
        if arr.ndim != 2:
            raise ValueError(f"mask must be 2-D (H, W), got shape {arr.shape}")
        h, w = arr.shape
        if orig_size is not None and tuple(int(v) for v in orig_size) != (w, h):
            raise ValueError(f"mask size {w}x{h} does not match orig_size {tuple(orig_size)}")
        geo = self.geometry((w, h))
        rw, rh = geo.resized
        left, top, right, bottom = geo.crop
        # Output pixel j of the resized image samples the source pixel under its centre: floor((j + 0.5) * w / rw).
        cols = np.minimum(((np.arange(left, min(right, rw)) + 0.5) * (w / rw)).astype(np.int64), w - 1)
        rows = np.minimum(((np.arange(top, min(bottom, rh)) + 0.5) * (h / rh)).astype(np.int64), h - 1)
        inside = arr[np.ix_(rows, cols)]
        if inside.shape == (bottom - top, right - left):
            return inside
        out = np.full((bottom - top, right - left), fill, dtype=arr.dtype)
        out[: inside.shape[0], : inside.shape[1]] = inside
        return out


def processor_of(model: Any) -> Processor:
    """The model's own :class:`~vitreg.models.processor.Processor`: ``ModelConfig.processor`` for a model vitreg built,
    else read from its timm ``pretrained_cfg`` (a timm model built elsewhere), else vitreg's squash."""
    cfg = getattr(model, "vitreg_config", None)
    proc = getattr(cfg, "processor", None)
    if isinstance(proc, Processor):
        return proc
    pretrained = getattr(model, "pretrained_cfg", None)
    if isinstance(pretrained, dict) and pretrained:
        return timm_processor(pretrained, f"timm's pretrained_cfg of {type(model).__name__}")
    return Processor()


def denormalize(
    tensor: torch.Tensor | np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """Normalised (3, H, W) image -> uint8 (H, W, 3) array (values rounded and clipped to 0..255)."""
    arr = tensor.detach().cpu().float().numpy() if isinstance(tensor, torch.Tensor) else np.asarray(tensor, np.float32)
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got shape {arr.shape}")
    rgb = arr.transpose(1, 2, 0) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)  # (H, W, 3) in 0..1
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
