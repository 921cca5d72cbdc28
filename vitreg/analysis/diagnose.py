"""One streaming pass of a model over images: capture block outputs, last-layer attention and the input patch
embeddings, and feed a :class:`NormStream`. Library code: the command only builds the loader and writes files."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from vitreg.analysis.maps import patch_background
from vitreg.analysis.neighbors import as_grid, capture_patch_embed, neighbor_similarity
from vitreg.analysis.sinks import sink_sums
from vitreg.analysis.stream import NormStream
from vitreg.models import Inspector, token_layout


def diagnose_model(
    model: nn.Module,
    batches: Iterable[dict[str, Any]],
    input_hw: tuple[int, int],
    denormalize: Callable[[torch.Tensor], np.ndarray],
    *,
    dtype: torch.dtype | None = None,
    examples: int = 8,
    cutoff: float | None = None,
    total: int | None = None,
    progress: bool = True,
    desc: str = "diagnose",
    sinks: bool = False,
) -> NormStream:
    """Accumulate the diagnose statistics of ``model`` over ``batches`` (loader dicts with ``image`` (B, 3, H, W) at
    ``input_hw``, ``index``, optional ``mask`` (B, H, W) and ``bad``). ``cutoff`` becomes an exact histogram edge.
    ``sinks``: also the attention-sink statistics of every block (attention of all queries, all blocks).
    Returns the (unmerged) stream; call ``merge_ranks()`` under torchrun."""
    depth = len(getattr(model, "blocks"))  # noqa: B009 - nn.Module attributes are dynamic
    layout = token_layout(model, input_hw)
    queries = layout.query_names(list(range(layout.num_prefix)))  # ["cls", "reg0", ...]: registers last
    stream = NormStream(
        depth=depth,
        grid=layout.grid,
        registers=layout.num_registers,
        query_names=queries,
        examples_k=examples,
        cutoff=cutoff,
    )
    inspector = Inspector(model, dtype=dtype)
    last = depth - 1
    bar = tqdm(total=total, unit="img", desc=desc, disable=not progress, file=sys.stderr, dynamic_ncols=True)
    with capture_patch_embed(model) as store:
        for batch in batches:
            stream.bad.extend(batch.get("bad", []))
            images = batch.get("image")
            if images is None or (isinstance(images, list) and not images):
                continue
            if isinstance(images, list) or tuple(images.shape[-2:]) != tuple(input_hw):
                raise ValueError(f"diagnose needs every image resized to {input_hw}; got mixed or other sizes")
            if sinks:
                cap = inspector.run(images, layers="all", attention_layers="all", queries="all", normed=True)
                bg = batch.get("mask")
                bg = patch_background(bg, layout.grid) if isinstance(bg, torch.Tensor) else None
                for i in range(depth):
                    stream.sums["sinks"][i] += sink_sums(cap.attention[i], layout, bg)
            else:
                cap = inspector.run(images, layers="all", attention_layers=[last], normed=True)
            b = images.shape[0]
            patch_norms = [cap.split_tokens(i).patches.norm(dim=-1).cpu() for i in range(depth)]
            out = cap.split_tokens(last)
            normed = cap.split_tokens("normed").patches.cpu()  # (B, gh, gw, C)
            emb = as_grid(store["emb"], layout.grid).cpu()  # (B, gh, gw, C) before the position embedding
            if queries:
                maps = cap.attention_maps(last)
                attention = torch.stack([maps[q] for q in queries], dim=1).cpu()  # (B, Q, gh, gw)
            else:
                attention = torch.zeros(b, 0, *layout.grid)
            mask = batch.get("mask")
            if isinstance(mask, list) or (mask is not None and tuple(mask.shape[-2:]) != tuple(input_hw)):
                mask = None  # some images without a mask: the background share uses whole batches only
            stream.add(
                patch_norms=patch_norms,
                cls_norm=out.cls.norm(dim=-1).cpu() if out.cls is not None else None,
                reg_norms=out.registers.norm(dim=-1).cpu(),
                reg_tokens=out.registers.cpu(),
                neighbor_sim=neighbor_similarity(emb),
                attention=attention,
                normed_patches=normed,
                images=images.cpu(),
                indices=[int(i) for i in batch["index"]],
                denormalize=denormalize,
                mask=mask,
            )
            bar.update(b)
    bar.close()
    return stream
