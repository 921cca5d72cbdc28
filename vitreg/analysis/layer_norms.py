"""Per-layer patch-token norm quantiles of a model over images (what `vitreg inspect` prints), streamed into the
fixed-edge histograms diagnose uses, so memory does not grow with the images."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vitreg.analysis.norms import default_edges, histogram, histogram_quantile
from vitreg.errors import DataError
from vitreg.models.inspect import Inspector
from vitreg.results.diagnose import BadImage
from vitreg.results.inspect import InspectLayer


@dataclass(kw_only=True)
class LayerNorms:
    """What :func:`layer_norms` measured: the fields of an :class:`~vitreg.results.inspect.InspectResult` that come
    from the images."""

    num_images: int
    bad_images: list[BadImage]
    layers: list[InspectLayer]
    cls_norm: float | None  # mean over images, last block
    register_norms: list[float]  # mean per register, last block


def layer_norms(model: torch.nn.Module, loader: Iterable[dict[str, Any]], device: Any, dtype: Any) -> LayerNorms:
    """Per-layer patch-token norm quantiles (pre-final-norm), plus [CLS] and register norms at the last layer."""
    inspector = Inspector(model, dtype=dtype)
    depth = len(model.blocks)  # type: ignore[arg-type]
    edges = default_edges()
    counts = np.zeros((depth, len(edges) - 1), np.int64)  # (L, E) patch-token norm histogram per block
    maxima = np.zeros(depth)
    cls_norms: list[np.ndarray] = []
    reg_norms: list[np.ndarray] = []
    images, bad = 0, []
    for batch in loader:
        bad.extend(batch.get("bad", []))
        x = batch.get("image")
        if x is None or (isinstance(x, list) and not x):
            continue
        for xb in x if isinstance(x, list) else [x]:
            xb = xb.unsqueeze(0) if xb.ndim == 3 else xb
            cap = inspector.run(xb.to(device), layers="all", attention_layers=None, normed=False)
            images += xb.shape[0]
            for i in range(depth):
                s = cap.split_tokens(i)
                norms = s.patches.norm(dim=-1).numpy()  # (B, H, W)
                counts[i] += histogram(norms, edges)
                maxima[i] = max(maxima[i], float(norms.max()))
                if i == depth - 1:
                    if s.cls is not None:
                        cls_norms.append(s.cls.norm(dim=-1).numpy())
                    if s.registers.shape[1]:
                        reg_norms.append(s.registers.norm(dim=-1).numpy())
    if images == 0:
        raise DataError("no usable images: every image was bad or the source was empty")
    layers = []
    for i in range(depth):
        med = histogram_quantile(counts[i], edges, 0.5)
        above = counts[i][edges[:-1] >= 3 * med].sum()  # bins wholly above 3x the median
        layers.append(
            InspectLayer(
                layer=i,
                median=med,
                p98=histogram_quantile(counts[i], edges, 0.98),
                max=float(maxima[i]),
                share_above_3x_median=float(above / counts[i].sum()),
            )
        )
    return LayerNorms(
        num_images=images,
        bad_images=[BadImage(path=p, reason=r) for p, r in bad],
        layers=layers,
        cls_norm=float(np.concatenate(cls_norms).mean()) if cls_norms else None,
        register_norms=np.concatenate(reg_norms).mean(0).tolist() if reg_norms else [],
    )
