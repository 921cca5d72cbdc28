"""How a format's owner resamples its position table to another grid, and that resampling done vitreg's side.

A checkpoint's position table covers the grid it was trained at. At any other ``--img-size`` the table must be
resampled, and the libraries that own the formats do it differently: timm and OpenCLIP antialias (bicubic), the
transformers ViT, DeiT, CLIP, SigLIP, ViT-MAE and DINOv2 classes do not (their ``interpolate_pos_encoding``),
transformers' DINOv2 with registers does, torchvision aligns the corners, Meta's DINOv2 scales by ``(grid + 0.1) /
table`` without antialias (the first models) or to the grid with it (the models with registers), SigLIP 2 resizes
bilinearly with antialias. The differences are not rounding: on the tiny models of tests/test_models_resampling.py
timm's way is off by about 0.1 where the owner's way agrees within 1e-5.

Each format names its owner's way (:class:`Resampling`); its layout calls :func:`resample_positions` on the table in
timm's keys before timm's own filter, which then finds it at the model's grid and leaves it, and
:func:`resample_at_forward` makes the model do the same for an input of another grid (LOST's full-resolution images).
At the checkpoint's own grid nothing changes. Light at import: torch is imported when a table is resampled.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from vitreg.models.load.formats.base import StateDict


@dataclass(frozen=True)
class Resampling:
    """One owner's resampling of a square position table (rows, columns) to a grid: ``F.interpolate`` with these
    settings, to the grid's size, or with ``offset``: by the scale factor ``(grid + offset) / table`` (Meta's first
    DINOv2 models, "to avoid floating point error")."""

    key: str  # its name in a model's config (``ModelConfig.resampling``, saved in model.json)
    owner: str  # who does it this way (the README's formats table)
    mode: str = "bicubic"
    antialias: bool = False
    align_corners: bool = False
    offset: float = 0.0

    @property
    def said(self) -> str:
        """One phrase for the README and the model's ``source``: mode and flags."""
        flags = ["antialiased" if self.antialias else "no antialias"]
        if self.align_corners:
            flags.append("corners aligned")
        if self.offset:
            flags.append(f"scale (grid + {self.offset:g}) / table")
        return f"{self.mode}, {', '.join(flags)} ({self.owner})"


#: timm's ``resample_abs_pos_embed`` (and OpenCLIP's ``resize_pos_embed``, the same): what timm's filter does itself
TIMM = Resampling("timm", "timm", antialias=True)
OPENCLIP = Resampling("openclip", "OpenCLIP", antialias=True)
#: transformers' ``interpolate_pos_encoding`` of ViT, DeiT, CLIP, SigLIP, ViT-MAE and DINOv2
TRANSFORMERS = Resampling("transformers", "transformers")
#: transformers' ``Dinov2WithRegistersModel``
TRANSFORMERS_DINOV2_REG = Resampling("transformers-dinov2-reg", "transformers, DINOv2 with registers", antialias=True)
#: transformers' SigLIP 2: ``resize_positional_embeddings``
TRANSFORMERS_SIGLIP2 = Resampling("transformers-siglip2", "transformers, SigLIP 2", mode="bilinear", antialias=True)
#: torchvision's ``interpolate_embeddings``
TORCHVISION = Resampling("torchvision", "torchvision", align_corners=True)
#: Meta's DINOv2 ``interpolate_pos_encoding``: the first models, and those with registers (``interpolate_antialias``,
#: ``interpolate_offset`` of its hub builders)
DINOV2 = Resampling("dinov2", "Meta's DINOv2", offset=0.1)
DINOV2_REG = Resampling("dinov2-reg", "Meta's DINOv2 with registers", antialias=True)
#: every way, by its key
_ALL = (TIMM, OPENCLIP, TRANSFORMERS, TRANSFORMERS_DINOV2_REG, TRANSFORMERS_SIGLIP2, TORCHVISION, DINOV2, DINOV2_REG)
RESAMPLINGS = {r.key: r for r in _ALL}


def named(key: str) -> Resampling:
    """The resampling a model's config names (CheckpointError naming the allowed keys for another)."""
    from vitreg.errors import CheckpointError

    if key not in RESAMPLINGS:
        raise CheckpointError(f"unknown position-table resampling {key!r}; allowed: {', '.join(RESAMPLINGS)}")
    return RESAMPLINGS[key]


def _prefix(length: int, model: nn.Module) -> int | None:
    """How many rows before the patch grid a table of ``length`` rows holds ([CLS], DeiT's token): timm's count
    first, then none, one, two; None when no count leaves a square grid."""
    first = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
    for p in dict.fromkeys((first, 0, 1, 2)):
        n = length - p
        if n > 0 and math.isqrt(n) ** 2 == n:
            return p
    return None


def resample_table(table: torch.Tensor, prefix: int, grid: tuple[int, int], how: Resampling) -> torch.Tensor:
    """``table`` (1, prefix + M*M, C) with its M x M patch rows resampled the owner's way to ``grid`` (gh, gw):
    (1, prefix + gh*gw, C), in the table's dtype (computed in fp32, as the owners do)."""
    import torch
    import torch.nn.functional as F

    gh, gw = grid
    m = math.isqrt(int(table.shape[1]) - prefix)
    dim = table.shape[-1]
    patch = table[:, prefix:].float().reshape(1, m, m, dim).permute(0, 3, 1, 2)  # (1, C, M, M)
    if how.offset:
        sizing: dict = {"scale_factor": ((gh + how.offset) / m, (gw + how.offset) / m)}
    else:
        sizing = {"size": (gh, gw)}
    out = F.interpolate(patch, mode=how.mode, antialias=how.antialias, align_corners=how.align_corners, **sizing)
    out = out.permute(0, 2, 3, 1).reshape(1, gh * gw, dim).to(table.dtype)  # (1, gh * gw, C)
    return torch.cat([table[:, :prefix], out], dim=1)


def resample_positions(sd: StateDict, model: nn.Module, how: Resampling, key: str = "pos_embed") -> StateDict:
    """``sd`` with ``sd[key]`` (1, prefix + M*M, C) resampled the owner's way to ``model``'s patch grid (gh, gw);
    unchanged when it is already that grid, when ``how`` is timm's (its filter does it), or when the table is not a
    square grid (timm's filter then says what is wrong)."""
    table = sd.get(key)
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if how == TIMM or table is None or table.ndim != 3 or grid is None:
        return sd
    gh, gw = int(grid[0]), int(grid[1])
    p = _prefix(int(table.shape[1]), model)
    if p is None:
        return sd
    m = math.isqrt(int(table.shape[1]) - p)
    if (m, m) == (gh, gw):
        return sd
    return {**sd, key: resample_table(table, p, (gh, gw), how)}


def resample_at_forward(model: nn.Module, how: Resampling) -> None:
    """Make ``model`` (a timm VisionTransformer built with ``dynamic_img_size``) resample its table to an input of
    another grid the owner's way too, as LOST's full-resolution images need: timm's ``_pos_embed`` would antialias.
    Nothing changes for timm's own way, for a model without a table (RoPE) or at the model's own grid."""
    from timm.models.vision_transformer import VisionTransformer

    if how == TIMM or not isinstance(model, VisionTransformer) or model.pos_embed is None:
        return
    model.owner_resampling = how  # type: ignore[assignment]  # read by _owner_pos_embed; kept by deepcopy
    model._pos_embed = types.MethodType(_owner_pos_embed, model)  # type: ignore[method-assign]


def _owner_pos_embed(self: Any, x: torch.Tensor) -> torch.Tensor:
    """timm's ``VisionTransformer._pos_embed`` with the table resampled by :func:`resample_table` (x: (B, H, W, C)
    patch grid with ``dynamic_img_size``) -> (B, prefix + H*W, C) tokens; timm's own method at the model's grid."""
    import torch

    if not self.dynamic_img_size or tuple(x.shape[1:3]) == tuple(self.patch_embed.grid_size):
        return type(self)._pos_embed(self, x)
    b, h, w, c = x.shape
    prefix = 0 if self.no_embed_class else self.num_prefix_tokens
    pos_embed = resample_table(self.pos_embed, prefix, (h, w), self.owner_resampling)
    x = x.view(b, -1, c)
    prefix_tokens = (self.cls_token, getattr(self, "dist_token", None), self.reg_token)  # timm's order (DeiT's too)
    to_cat = [t.expand(b, -1, -1) for t in prefix_tokens if t is not None]
    if self.no_embed_class:  # the table has no rows for the prefix: add, then prepend it (timm's order)
        x = torch.cat([*to_cat, x + pos_embed], dim=1)
    else:
        x = torch.cat([*to_cat, x], dim=1) + pos_embed
    return self.pos_drop(x)


#: How transformers' BEiT and data2vec-vision resample a relative position bias table to another grid, at every
#: forward (``BeitRelativePositionBias``): the (2M-1) x (2M-1) offsets bilinearly, without antialias, the three rows
#: of [CLS] kept. timm's Beit filter does it its own way (``resize_rel_pos_bias_table``).
REL_POS_SAID = "relative position bias tables bilinear, no antialias (transformers)"


def resample_rel_pos_table(table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """A BEiT relative position bias table ((2M-1)^2 + 3, heads) for an M x M grid -> ((2gh-1)(2gw-1) + 3, heads)
    for ``grid`` (gh, gw), as transformers' ``BeitRelativePositionBias.forward`` does (computed in fp32)."""
    import torch
    import torch.nn.functional as F

    side = math.isqrt(int(table.shape[0]) - 3)  # 2M - 1
    heads = table.shape[-1]
    offsets = table[:-3].float().reshape(1, side, side, heads).permute(0, 3, 1, 2)  # (1, heads, 2M-1, 2M-1)
    new = (2 * grid[0] - 1, 2 * grid[1] - 1)
    out = F.interpolate(offsets, size=new, mode="bilinear", align_corners=False)
    out = out.permute(0, 2, 3, 1).reshape(new[0] * new[1], heads).to(table.dtype)  # ((2gh-1)(2gw-1), heads)
    return torch.cat([out, table[-3:]])  # [CLS]->patch, patch->[CLS], [CLS]->[CLS] rows unchanged


def resample_rel_pos(sd: StateDict, model: nn.Module, how: Resampling) -> tuple[StateDict, StateDict]:
    """``sd`` split into (the rest, its relative position bias tables resampled the owner's way to ``model``'s grid)
    for a timm Beit whose owner is not timm (its filter then never sees the tables); ({}: timm's own way) the
    tables stay in ``sd`` for timm's filter."""
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if how == TIMM or grid is None:
        return sd, {}
    gh, gw = int(grid[0]), int(grid[1])
    tables, rest = {}, {}
    for k, v in sd.items():
        if not k.endswith("relative_position_bias_table"):
            rest[k] = v
        elif v.ndim == 2 and math.isqrt(int(v.shape[0]) - 3) ** 2 == int(v.shape[0]) - 3:
            same = int(v.shape[0]) == (2 * gh - 1) * (2 * gw - 1) + 3 and gh == gw
            tables[k] = v if same else resample_rel_pos_table(v, (gh, gw))
        else:  # not a square table: left to timm's filter, which says what does not fit
            rest[k] = v
    return rest, tables
