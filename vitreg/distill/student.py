"""The student of a distillation: the base model's weights plus N new register tokens, with a named set of weights
unlocked (everything else frozen), and the forward that returns what the loss compares.

Unlocked sets (``UNLOCK_SETS``), from the smallest:

- ``registers``: the new register tokens alone (the frozen network must route the artifacts into them);
- ``neurons``: + the input rows of the register neurons (their ``fc1`` weight row and bias), the MLP units that write
  the high-norm tokens (found by `vitreg fix`'s search). Kept as row deltas beside the frozen ``fc1`` and merged into
  it when the model is saved;
- ``mlp-in``: + the whole ``fc1`` (weights and bias) of every block that holds a register neuron;
- ``phreg``: + the position and patch embeddings and the last block, as PH-Reg (Chen, Yan et al. 2025) unlocks them.

The new registers are initialised as PH-Reg does, N(0, 1/C), and get no position (zero rows where the layout adds
position embeddings to the prefix, :mod:`vitreg.models.registers`). A model that already has registers keeps its
own frozen; the new ones follow them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from vitreg.errors import ConfigError
from vitreg.models.registers import append_registers

UNLOCK_SETS: dict[str, str] = {
    "registers": "the new register tokens only",
    "neurons": "registers + the input rows (fc1 weight row and bias) of the register neurons",
    "mlp-in": "registers + the whole fc1 of every block that holds a register neuron",
    "phreg": "registers + position and patch embeddings + the last block (PH-Reg's choice)",
}


class RowDelta(nn.Module):
    """Trainable deltas of some output rows of a frozen ``fc1``: ``fc1(x)[..., index] += x @ weight.T + bias``.
    Training K rows this way costs a (B, N, C) x (C, K) product, not a gradient for the whole (H, C) weight."""

    def __init__(self, index: Sequence[int], in_features: int):
        super().__init__()
        self.index: torch.Tensor
        self.register_buffer("index", torch.tensor(sorted(index), dtype=torch.long))
        self.weight = nn.Parameter(torch.zeros(len(index), in_features))
        self.bias = nn.Parameter(torch.zeros(len(index)))

    def hook(self, _module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
        x = args[0]  # (B, N, C): the block's normed tokens
        d = x @ self.weight.T.to(x.dtype) + self.bias.to(x.dtype)  # (B, N, K)
        return out.index_add(-1, self.index.to(out.device), d.to(out.dtype))


class Student(nn.Module):
    """``base`` (copied, frozen) with ``registers`` new tokens and the ``unlock`` set trainable."""

    def __init__(self, base: nn.Module, registers: int, unlock: str, neurons: Sequence[tuple[int, int]], seed: int):
        super().__init__()
        if unlock not in UNLOCK_SETS:
            raise ConfigError(f"--unlock {unlock!r}: choose one of {', '.join(UNLOCK_SETS)}")
        if unlock in ("neurons", "mlp-in") and not neurons:
            raise ConfigError(f"--unlock {unlock}: the model has no register neurons to unlock (no outliers found)")
        self.model = copy.deepcopy(base)
        vit: Any = self.model
        for p in self.model.parameters():
            p.requires_grad_(False)
        dim = int(vit.embed_dim)
        g = torch.Generator().manual_seed(seed)
        values = torch.randn(1, registers, dim, generator=g) / math.sqrt(dim)  # PH-Reg's initialisation
        self.first = append_registers(self.model, values, "distilled registers")  # token index of the first new one
        self.registers = registers
        self.unlock = unlock
        self.own = int(vit.reg_token.shape[1]) - registers  # the model's own registers stay as they were
        vit.reg_token.requires_grad_(True)
        by_layer: dict[int, list[int]] = {}
        for layer, index in neurons:
            by_layer.setdefault(int(layer), []).append(int(index))
        self.rows = nn.ModuleDict()
        if unlock == "neurons":
            for layer, units in sorted(by_layer.items()):
                fc1 = vit.blocks[layer].mlp.fc1
                delta = RowDelta(units, fc1.in_features)
                self.rows[str(layer)] = delta
                fc1.register_forward_hook(delta.hook)
        elif unlock == "mlp-in":
            for layer in sorted(by_layer):
                vit.blocks[layer].mlp.fc1.requires_grad_(True)
        elif unlock == "phreg":
            for module in (vit.patch_embed, vit.blocks[-1]):
                module.requires_grad_(True)
            if vit.pos_embed is not None:
                vit.pos_embed.requires_grad_(True)

    def mask_gradients(self) -> None:
        """Zero the gradients of what stays frozen inside a trained tensor: the model's own registers, and the new
        registers' rows of a position embedding that covers the prefix (registers have no position)."""
        vit: Any = self.model
        if self.own and vit.reg_token.grad is not None:
            vit.reg_token.grad[:, : self.own] = 0
        pe = vit.pos_embed
        if pe is not None and pe.grad is not None and not getattr(vit, "no_embed_class", True):
            pe.grad[:, self.first : self.first + self.registers] = 0

    # ------------------------------------------------------------------------------------------ what is trained
    def trainable(self) -> dict[str, nn.Parameter]:
        """Every trainable tensor by name (the registers' tensor included; its frozen rows get no gradient)."""
        return {k: p for k, p in self.named_parameters() if p.requires_grad}

    def parameter_count(self) -> int:
        """Numbers the distillation changes: the new registers and the unlocked weights."""
        vit: Any = self.model
        n = self.registers * int(vit.embed_dim)
        for name, p in self.trainable().items():
            if name == "model.reg_token":
                continue
            if name == "model.pos_embed" and not getattr(vit, "no_embed_class", True):
                n += p.numel() - self.registers * p.shape[-1]
            else:
                n += p.numel()
        return n

    def row_index(self) -> dict[str, torch.Tensor]:
        """fc1 weight and bias names -> the rows the ``neurons`` set changes."""
        out: dict[str, torch.Tensor] = {}
        for layer, delta in self.rows.items():
            assert isinstance(delta, RowDelta)
            out[f"blocks.{layer}.mlp.fc1.weight"] = delta.index
            out[f"blocks.{layer}.mlp.fc1.bias"] = delta.index
        return out

    def merged(self) -> nn.Module:
        """A plain copy of the model with the row deltas merged into ``fc1`` (no hooks, nothing trainable)."""
        model = copy.deepcopy(self.model)
        vit: Any = model
        with torch.no_grad():
            for layer, delta in self.rows.items():
                fc1 = vit.blocks[int(layer)].mlp.fc1
                fc1._forward_hooks.clear()
                fc1.weight.index_add_(0, delta.index, delta.weight.to(fc1.weight))
                fc1.bias.index_add_(0, delta.index, delta.bias.to(fc1.bias))
        for p in model.parameters():
            p.requires_grad_(False)
            p.grad = None
        return model

    # ------------------------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, blocks: Sequence[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Tokens (B, N, C) at the output of each of ``blocks`` (before the final norm) and after the final norm."""
        return block_tokens(self.model, x, blocks)


def block_tokens(model: nn.Module, x: torch.Tensor, blocks: Sequence[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``model``'s tokens (B, N, C) at the output of each of ``blocks`` (pre-norm, in that order) and its final normed
    tokens, by hooks on the blocks (any timm VisionTransformer or Eva: RoPE and all), with the graph kept when
    gradients are on."""
    vit: Any = model
    got: dict[int, torch.Tensor] = {}
    handles = []
    for i in sorted(set(blocks)):
        handles.append(vit.blocks[i].register_forward_hook(lambda _m, _a, out, i=i: got.__setitem__(i, out)))
    try:
        final = vit.forward_features(x)  # (B, N, C) after the final norm
    finally:
        for h in handles:
            h.remove()
    return [got[i] for i in blocks], final
