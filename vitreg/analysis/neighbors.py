"""4-neighbour cosine similarity of input patch embeddings (paper Fig. 5a): artifacts appear on patches that look
like their neighbours (redundant patches), so the similarity is measured on the *input* of the transformer, the
patch embedding before the position embedding, captured with a forward hook on ``model.patch_embed``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F


def neighbor_similarity(emb: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of each patch to its existing 4 neighbours (up, down, left, right).

    ``emb``: (B, H, W, C) patch embeddings. Returns (B, H, W) float32; border patches average over their 3 (edges)
    or 2 (corners) neighbours; a 1x1 grid has no neighbour and gets NaN.
    """
    if emb.ndim != 4:
        raise ValueError(f"expected (B, H, W, C) patch embeddings, got {tuple(emb.shape)}")
    x = F.normalize(emb.float(), dim=-1)
    b, h, w, _ = x.shape
    total = torch.zeros(b, h, w, dtype=torch.float32, device=x.device)
    count = torch.zeros(h, w, dtype=torch.float32, device=x.device)
    vert = (x[:, 1:] * x[:, :-1]).sum(-1)  # (B, H-1, W): similarity of row r with row r+1
    horiz = (x[:, :, 1:] * x[:, :, :-1]).sum(-1)  # (B, H, W-1)
    total[:, :-1] += vert
    total[:, 1:] += vert
    total[:, :, :-1] += horiz
    total[:, :, 1:] += horiz
    count[:-1] += 1
    count[1:] += 1
    count[:, :-1] += 1
    count[:, 1:] += 1
    return total / count  # count 0 (1x1 grid) gives NaN on purpose: no neighbour, no similarity


def as_grid(emb: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """patch_embed output, (B, N, C) flattened or (B, H, W, C) NHWC, as (B, H, W, C)."""
    if emb.ndim == 4:
        return emb
    if emb.ndim == 3 and emb.shape[1] == grid[0] * grid[1]:
        return emb.reshape(emb.shape[0], grid[0], grid[1], emb.shape[2])
    raise ValueError(f"patch embedding of shape {tuple(emb.shape)} does not fit a {grid} grid")


@contextmanager
def capture_patch_embed(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, ``store["emb"]`` holds the last patch_embed output (before the position embedding)."""
    store: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        out = output[0] if isinstance(output, tuple) else output  # some embeds return (x, feat_size)
        store["emb"] = out.detach().float()

    embed: nn.Module = getattr(model, "patch_embed")  # noqa: B009 - nn.Module attributes are dynamic
    handle = embed.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()
