"""Register specialisation (reproducibility study): how alike the attention maps of different registers are."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def attention_similarity(maps: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarity of attention maps, per image.

    ``maps``: (B, R, H, W) attention of R query tokens over the patch grid. Returns (B, R, R); 1 on the diagonal,
    near 1 off it when the registers attend to the same places (no specialisation)."""
    b, r = maps.shape[:2]
    flat = F.normalize(maps.reshape(b, r, -1).double(), dim=-1)
    return flat @ flat.transpose(1, 2)


def mean_offdiag(sim: torch.Tensor | np.ndarray | list, r: int | None = None) -> float | None:
    """Mean of the off-diagonal entries of an (R, R) matrix; None when R < 2."""
    s = torch.as_tensor(sim, dtype=torch.float64)
    r = s.shape[0] if r is None else r
    if r < 2:
        return None
    off = ~torch.eye(r, dtype=torch.bool)
    return float(s[off].mean())
