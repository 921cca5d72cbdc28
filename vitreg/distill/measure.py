"""Held-out measurement of a distillation while it trains: the outlier share of the student's patch tokens at every
block, above the base's own threshold there (the auto rule on the base's norms on the same images), and its final
[CLS] cosine to the base's. The progress bar shows the largest share over the blocks; metrics.jsonl keeps them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from vitreg.analysis.norms import find_threshold
from vitreg.device import autocast
from vitreg.distill.student import block_tokens


@dataclass
class HeldOutPoint:
    shares: list[float]  # per block: patch tokens above the base's threshold there
    cls_cosine: float | None  # median over images of the final [CLS] cosine to the base's (None: no [CLS])

    @property
    def worst(self) -> float:
        return max(self.shares) if self.shares else 0.0


class HeldOutMeter:
    """The base's per-block thresholds on ``images`` (n, 3, H, W), measured once; :meth:`measure` applies them to a
    model with ``extra`` more prefix tokens than the base."""

    def __init__(self, base: nn.Module, images: torch.Tensor, device: Any, dtype: Any, batch_size: int = 16):
        self.images, self.device, self.dtype, self.batch_size = images, device, dtype, batch_size
        vit: Any = base
        self.depth = len(vit.blocks)
        self.prefix = int(vit.num_prefix_tokens)
        self.has_cls = getattr(vit, "cls_token", None) is not None
        norms, self.cls = self._pass(base, self.prefix)
        self.thresholds: list[float | None] = [find_threshold(n.ravel(), "auto").threshold for n in norms]
        self.before = self._point(norms, self.cls)

    def _pass(self, model: nn.Module, prefix: int) -> tuple[list[np.ndarray], torch.Tensor | None]:
        """Patch-token norms per block, each (n, P), and the final [CLS] (n, C) or None."""
        per_block: list[list[np.ndarray]] = [[] for _ in range(self.depth)]
        cls = []
        was = model.training
        model.eval()
        with torch.no_grad(), autocast(self.device, self.dtype):
            for i in range(0, len(self.images), self.batch_size):
                toks, final = block_tokens(
                    model, self.images[i : i + self.batch_size].to(self.device), range(self.depth)
                )
                for b, t in enumerate(toks):
                    per_block[b].append(t[:, prefix:].float().norm(dim=-1).cpu().numpy())
                if self.has_cls:
                    cls.append(final[:, 0].float().cpu())
        model.train(was)
        return [np.concatenate(n) for n in per_block], (torch.cat(cls) if cls else None)

    def _point(self, norms: list[np.ndarray], cls: torch.Tensor | None) -> HeldOutPoint:
        shares = [0.0 if t is None else float((n > t).mean()) for n, t in zip(norms, self.thresholds, strict=True)]
        cos = None
        if cls is not None and self.cls is not None:
            cos = float(torch.nn.functional.cosine_similarity(cls, self.cls, dim=-1).median())
        return HeldOutPoint(shares=shares, cls_cosine=cos)

    def measure(self, model: nn.Module, extra: int) -> HeldOutPoint:
        norms, cls = self._pass(model, self.prefix + extra)
        return self._point(norms, cls)
