"""Register tokens added to a built timm ViT (VisionTransformer or Eva): the one place that grows a model's prefix.

Test-time registers (:mod:`vitreg.models.ttr`) and registers distilled into a released model
(:mod:`vitreg.distill`) both append tokens right after the model's own registers, so the token layout stays
``[CLS]? + registers + patches`` (timm's ``_pos_embed`` order) and every analysis counts the new tokens as registers.
Where the layout adds position embeddings to the prefix tokens too (``no_embed_class=False``: CLIP, OpenCLIP), the
new tokens get zero rows there: registers have no position, as in the paper.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from vitreg.errors import ConfigError

#: Why timm's Beit takes no extra prefix token (registers, test-time registers): one line for the refusals
BEIT_NO_REGISTERS = (
    "timm's Beit (BEiT, data2vec-vision) takes no register tokens: its relative position bias covers [CLS] and "
    "the patches only"
)


def refuse_beit(model: nn.Module, what: str) -> None:
    """ConfigError (one line, starting with ``what``) for timm's Beit (BEiT, data2vec-vision): its relative position
    bias is a (1 + H*W)^2 table with no row for another token. The jobs that add tokens call it before any work."""
    from timm.models.beit import Beit

    if isinstance(model, Beit):
        raise ConfigError(f"{what}: {BEIT_NO_REGISTERS}")


def check_extendable(model: nn.Module, what: str) -> None:
    """ConfigError (one line, starting with ``what``) when ``model`` cannot take extra prefix tokens."""
    refuse_beit(model, what)
    vit: Any = model
    if not hasattr(vit, "blocks") or not hasattr(vit, "num_prefix_tokens") or not hasattr(vit, "reg_token"):
        raise ConfigError(f"{what} need a timm VisionTransformer or Eva, got {type(model).__name__}")
    if getattr(vit, "dist_token", None) is not None:  # timm's VisionTransformerDistilled lays out its own prefix
        raise ConfigError(f"{what}: a model with DeiT's distillation token takes no extra tokens")


def append_registers(model: nn.Module, values: torch.Tensor, what: str = "registers") -> int:
    """Append the tokens ``values`` (1, n, C) after ``model``'s registers, in place; returns the token index of the
    first new one. The position embedding gains zero rows for them where it covers the prefix."""
    check_extendable(model, what)
    vit: Any = model
    if values.dim() != 3 or values.shape[0] != 1 or values.shape[2] != int(vit.embed_dim):
        raise ConfigError(f"{what}: expected tokens of shape (1, n, {vit.embed_dim}), got {tuple(values.shape)}")
    n = int(values.shape[1])
    first = int(vit.num_prefix_tokens)  # the new tokens follow [CLS] and the trained registers
    ref = vit.patch_embed.proj.weight
    new = values.detach().to(device=ref.device, dtype=ref.dtype)
    old = vit.reg_token  # (1, R, C) or None
    trained = old is None or old.requires_grad
    vit.reg_token = nn.Parameter(new if old is None else torch.cat([old.detach(), new], dim=1), requires_grad=trained)
    if vit.pos_embed is not None and not getattr(vit, "no_embed_class", True):
        # this layout adds position embeddings to prefix tokens too: the new tokens get zero rows (no position)
        pe = vit.pos_embed.detach()  # (1, prefix + patches, C)
        zeros = torch.zeros(1, n, pe.shape[-1], device=pe.device, dtype=pe.dtype)
        frozen = not vit.pos_embed.requires_grad  # a frozen table stays frozen (a student trains what it unlocks)
        vit.pos_embed = nn.Parameter(torch.cat([pe[:, :first], zeros, pe[:, first:]], dim=1), requires_grad=not frozen)
    vit.num_prefix_tokens = first + n
    if hasattr(vit, "num_reg_tokens"):
        vit.num_reg_tokens = int(vit.num_reg_tokens) + n
    for module in [block.attn for block in vit.blocks] + [getattr(vit, "patch_drop", None)]:
        if module is not None and hasattr(module, "num_prefix_tokens"):  # Eva's RoPE skips the prefix tokens
            module.num_prefix_tokens = int(module.num_prefix_tokens) + n
    return first
