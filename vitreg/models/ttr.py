"""Test-time registers (Jiang, Dravid et al., "Vision Transformers Don't Need Trained Registers", 2025).

A sparse set of MLP units (*register neurons*) writes the high-norm activations of artifact patches. At inference,
one or a few extra tokens are appended to the prefix, zero-initialised and without position embedding, and at every
register neuron the extra tokens receive the unit's largest-magnitude activation over all tokens (sign kept) while
the patch tokens get 0; [CLS] and trained registers are left alone. No weight changes.

The extra tokens go right after the model's own registers, so the token layout stays ``[CLS]? + registers +
patches`` (timm's ``_pos_embed`` order) and every analysis, the Inspector's ``split_tokens().registers``, LOST and
the probes count them as registers. The neurons and the number of tokens are part of the model's
:class:`~vitreg.models.presets.ModelConfig`, so ``save_model`` / ``load_model`` re-create a fixed model.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn

from vitreg.errors import ConfigError
from vitreg.models.registers import append_registers, check_extendable

MAX_TEST_TIME_REGISTERS = 16


class RegisterShift:
    """Forward pre-hook of one block's ``mlp.fc2``: moves the register neurons' activations into the test-time
    registers. A plain object (not a closure) so ``copy.deepcopy`` of the model copies it with the model."""

    def __init__(self, units: Sequence[int], first: int, count: int):
        self.units = [int(u) for u in units]  # hidden-unit indices of this block's MLP
        self.first, self.count = int(first), int(count)  # token index of the first test-time register, how many
        self._index: dict[torch.device, torch.Tensor] = {}

    def index(self, device: torch.device) -> torch.Tensor:
        if device not in self._index:
            self._index[device] = torch.tensor(self.units, dtype=torch.long, device=device)
        return self._index[device]

    def __call__(self, _module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]  # (B, N, H): the MLP's hidden activations, after the nonlinearity (and gate)
        idx = self.index(x.device)
        a = x.index_select(-1, idx)  # (B, N, K): only the register neurons' columns
        peak = a.gather(1, a.abs().argmax(dim=1, keepdim=True))  # (B, 1, K): largest magnitude, sign kept
        end = self.first + self.count
        a[:, end:] = 0  # patch tokens (they follow the test-time registers)
        a[:, self.first : end] = peak
        if torch.is_grad_enabled():  # autograd may need x: write a copy
            return (x.index_copy(-1, idx, a), *args[1:])
        # inference: x is the MLP's fresh activation, read by fc2 only; write the K columns in place (copying all of
        # x would cost as much as the extra token on a small model)
        return (x.index_copy_(-1, idx, a), *args[1:])

    def __deepcopy__(self, memo: dict[int, Any]) -> RegisterShift:
        return RegisterShift(self.units, self.first, self.count)


def _neuron_pairs(neurons: Iterable[Any]) -> list[tuple[int, int]]:
    """``(layer, index)`` pairs from RegisterNeuron objects, pairs or lists; ConfigError naming a bad entry."""
    out = []
    for n in neurons:
        try:
            layer, index = n
            out.append((int(layer), int(index)))
        except (TypeError, ValueError):
            raise ConfigError(f"a register neuron is (layer, index), got {n!r}") from None
    return out


def has_test_time_registers(model: nn.Module) -> bool:
    cfg = getattr(model, "vitreg_config", None)
    return bool(cfg is not None and cfg.test_time_registers)


def attach(model: nn.Module, neurons: Iterable[Any], registers: int) -> nn.Module:
    """Add ``registers`` test-time registers to ``model`` in place (see :func:`add_test_time_registers`)."""
    vit: Any = model  # timm's attributes are dynamic on nn.Module
    pairs = _neuron_pairs(neurons)
    if not 1 <= int(registers) <= MAX_TEST_TIME_REGISTERS:
        raise ConfigError(f"test-time registers: between 1 and {MAX_TEST_TIME_REGISTERS}, got {registers}")
    check_extendable(model, "test-time registers")
    depth = len(vit.blocks)
    by_layer: dict[int, list[int]] = {}
    for layer, index in pairs:
        if not 0 <= layer < depth:
            raise ConfigError(f"register neuron ({layer}, {index}): layer out of range for {depth} blocks")
        fc2 = getattr(getattr(vit.blocks[layer], "mlp", None), "fc2", None)
        if not isinstance(fc2, nn.Linear):
            raise ConfigError(f"block {layer}'s MLP has no fc2 linear layer to shift register neurons at")
        if not 0 <= index < fc2.in_features:
            raise ConfigError(f"register neuron ({layer}, {index}): block {layer} has {fc2.in_features} hidden units")
        by_layer.setdefault(layer, []).append(index)

    n = int(registers)
    first = append_registers(model, torch.zeros(1, n, int(vit.embed_dim)), "test-time registers")  # zero-initialised
    for layer, units in sorted(by_layer.items()):
        vit.blocks[layer].mlp.fc2.register_forward_pre_hook(RegisterShift(units, first, n))
    cfg = getattr(vit, "vitreg_config", None)
    if cfg is not None:
        vit.vitreg_config = dataclasses.replace(cfg, test_time_registers=n, register_neurons=pairs)
    return model


def add_test_time_registers(model: nn.Module, neurons: Iterable[Any], registers: int = 1) -> nn.Module:
    """A copy of ``model`` with ``registers`` test-time registers fed by ``neurons`` ((layer, index) pairs or the
    :class:`~vitreg.analysis.register_neurons.RegisterNeuron` list of ``find_register_neurons``); ``model`` itself is
    untouched. The new tokens count as registers (``num_prefix_tokens`` grows), and the fixed model's config records
    the neurons, so ``save_model`` and ``load_model`` round-trip it.

    >>> fixed = add_test_time_registers(model, find_register_neurons(model, images)[:10])
    """
    if has_test_time_registers(model):
        raise ConfigError("this model already has test-time registers; add them to the original model")
    return attach(copy.deepcopy(model), neurons, registers)
