"""Attention sinks per block: does one token soak up the patch queries' attention, and which one?

For every block and head, the attention mass each token receives from the patch queries (the mean over patch
queries of their attention probabilities) is computed; the largest is the head's top mass, and the head has a sink
when it exceeds SINK_MASS (30% of its patch queries' attention on one token). Sums over images stream like the
other diagnose statistics, so ranks and batches add.
"""

from __future__ import annotations

import numpy as np
import torch

from vitreg.models.inspect import TokenLayout
from vitreg.results.diagnose import SinkLayer

SINK_MASS = 0.3  # a head has a sink when one token gets more than this share of its patch queries' attention
#: columns of the per-block sums: (image, head) pairs, top mass, heads with a sink, sinks on a patch token,
#: sinks on a background patch, [CLS] mass, register mass
SINK_COLUMNS = ("pairs", "top_mass", "sink_heads", "sink_on_patch", "sink_on_background", "cls_mass", "register_mass")


def sink_sums(attention: torch.Tensor, layout: TokenLayout, background: torch.Tensor | None) -> np.ndarray:
    """(len(SINK_COLUMNS),) sums over one block's attention (B, heads, N, N) of all queries; ``background``
    (B, gh, gw) bool patch flags or None."""
    b, h = attention.shape[:2]
    mass = attention[:, :, layout.patch_slice].float().mean(2)  # (B, heads, N): from the patch queries
    top, where = mass.max(-1)  # (B, heads)
    sink = top > SINK_MASS
    on_patch = sink & (where >= layout.num_prefix)
    on_bg = torch.zeros_like(sink)
    if background is not None:
        flags = background.reshape(b, 1, -1).expand(b, h, -1).to(mass.device)  # (B, heads, P)
        patch = (where - layout.num_prefix).clamp(min=0)
        on_bg = on_patch & flags.gather(2, patch.unsqueeze(-1)).squeeze(-1).bool()
    cls = mass[..., 0].sum() if layout.has_cls else torch.zeros(())
    regs = mass[..., layout.register_slice].sum()
    return np.array(
        [b * h, float(top.sum()), int(sink.sum()), int(on_patch.sum()), int(on_bg.sum()), float(cls), float(regs)]
    )


def sink_summary(sums: np.ndarray) -> list[SinkLayer]:
    """Per block from the (L, len(SINK_COLUMNS)) sums: mean top mass, share of heads with a sink, where the sinks
    are, and the mean mass on [CLS] and on all registers."""
    out = []
    for layer, row in enumerate(sums):
        pairs, top, sinks, patch, bg, cls, reg = (float(v) for v in row)
        if pairs == 0:
            continue
        out.append(
            SinkLayer(
                layer=layer,
                top_mass=top / pairs,
                sink_heads=sinks / pairs,
                sinks_on_patches=patch / sinks if sinks else None,
                sinks_on_background=bg / sinks if sinks else None,
                cls_share=cls / pairs,
                register_share=reg / pairs,
            )
        )
    return out
