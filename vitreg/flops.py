"""FLOPs and parameters of a ViT against its number of registers and its resolution (paper Fig. 12, appendix B).

Models are built on the meta device (no memory, no weights, a ViT-giant in a second) and run once at batch 1 under
``torch.utils.flop_counter.FlopCounterMode``. On the meta device attention decomposes into two batched matrix
products, which the counter sees; CPU's fused attention kernel is not counted, so counting on CPU would miss the part
of the cost that registers grow quadratically. Counted: matrix products and the patch convolution, 2 FLOPs per
multiply-add (the counter's convention); norms, softmax and activations (a few % of a ViT's cost) are not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from vitreg.models.presets import ModelConfig, build_model, count_parameters
from vitreg.results.flops import FlopsRow


def count(cfg: ModelConfig, registers: int, img_size: int | None = None) -> dict:
    """FLOPs of one forward at batch 1 and parameter count of ``cfg`` with ``registers`` registers at ``img_size``."""
    h, w = cfg.img_size
    size = (int(h), int(w)) if img_size is None else (int(img_size), int(img_size))
    cfg = dataclasses.replace(cfg, registers=int(registers), img_size=size)
    with torch.device("meta"):
        model = build_model(cfg).eval().requires_grad_(False)
        x = torch.empty(1, 3, *size)
    # no parameter asks for a gradient: the counter's module tracker hooks the gradient of any input that does, and
    # a view of a parameter made under no_grad (timm's attention-pool latent, expanded to the batch) has none
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    grid = model.patch_embed.dynamic_feat_size(size) if hasattr(model.patch_embed, "dynamic_feat_size") else None
    patches = int(grid[0] * grid[1]) if grid is not None else int(model.patch_embed.num_patches)
    return dict(
        registers=int(registers),
        img_size=int(size[0]),
        tokens=patches + int(model.num_prefix_tokens),
        flops=int(counter.get_total_flops()),
        params=int(count_parameters(model)),
        width=int(model.embed_dim),
    )


def flops_table(
    cfg: ModelConfig,
    registers: Sequence[int],
    resolutions: Sequence[int | None] = (None,),
    tick: Callable[[], object] | None = None,
) -> list[FlopsRow]:
    """One row per (resolution, registers) with the overhead relative to the same model with 0 registers;
    ``tick`` is called after each row (a progress bar's update)."""
    rows = []
    for res in resolutions:
        base = count(cfg, 0, res)
        for n in registers:
            r = base if int(n) == 0 else count(cfg, n, res)
            if tick is not None:
                tick()
            rows.append(
                FlopsRow(
                    **r,
                    flops_overhead=r["flops"] / base["flops"] - 1.0,
                    params_overhead=r["params"] / base["params"] - 1.0,
                    added_params=r["params"] - base["params"],
                )
            )
    return rows
