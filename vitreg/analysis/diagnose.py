"""One streaming pass of a model over images: capture every block's patch-token norms, the analysed block's tokens
and attention and the input patch embeddings, and feed a :class:`NormStream`. Library code: the command only builds
the loader and writes files."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from vitreg.analysis.maps import patch_background
from vitreg.analysis.neighbors import as_grid, capture_patch_embed, neighbor_similarity
from vitreg.analysis.sinks import sink_sums
from vitreg.analysis.stream import NormStream
from vitreg.errors import ConfigError
from vitreg.models import Inspector, token_layout
from vitreg.models.inspect import Capture, Resume

#: ``observe(i, batch, capture)``: called after the i-th usable batch (0-based) with its loader dict and Capture
Observer = Callable[[int, dict[str, Any], Capture], None]


def resolve_layer(layer: int, depth: int, flag: str = "--layer") -> int:
    """Block index ``layer`` (negative counts from the end) as 0..depth-1; ConfigError naming ``flag`` and the
    depth when it is out of range."""
    if not -depth <= int(layer) < depth:
        raise ConfigError(
            f"{flag} {layer} is out of range for a model with {depth} blocks (0..{depth - 1}, or -{depth}..-1)"
        )
    return int(layer) % depth


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
    layer: int = -1,
    observe: Observer | None = None,
    keep_inputs: Sequence[int] = (),
    resume: Sequence[Resume | None] | None = None,
) -> NormStream:
    """Accumulate the diagnose statistics of ``model`` over ``batches`` (loader dicts with ``image`` (B, 3, H, W) at
    ``input_hw``, ``index``, optional ``mask`` (B, H, W) and ``bad``). ``cutoff`` becomes an exact histogram edge.
    ``sinks``: also the attention-sink statistics of every block (attention of all queries, all blocks).
    ``layer``: the block whose output tokens the output-level statistics use (default the last).
    ``observe``, ``keep_inputs`` and ``resume`` (one :class:`Resume` or None per usable batch) let a caller that runs
    several passes over the same images share work between them (see :mod:`vitreg.analysis.ttr_sweep`).
    Returns the (unmerged) stream; call ``merge_ranks()`` under torchrun."""
    depth = len(getattr(model, "blocks"))  # noqa: B009 - nn.Module attributes are dynamic
    out_layer = resolve_layer(layer, depth)
    last = out_layer == depth - 1
    layout = token_layout(model, input_hw)
    queries = layout.query_names(list(range(layout.num_prefix)))  # ["cls", "reg0", ...]: registers last
    stream = NormStream(
        depth=depth,
        grid=layout.grid,
        registers=layout.num_registers,
        query_names=queries,
        examples_k=examples,
        cutoff=cutoff,
        layer=out_layer,
    )
    if sinks and resume is not None:
        raise ValueError("attention sinks need every block's attention: a resumed pass skips blocks")
    inspector = Inspector(model, dtype=dtype)
    bar = tqdm(total=total, unit="img", desc=desc, disable=not progress, file=sys.stderr, dynamic_ncols=True)
    n = 0
    with capture_patch_embed(model) as store:
        for batch in batches:
            stream.bad.extend(batch.get("bad", []))
            images = batch.get("image")
            if images is None or (isinstance(images, list) and not images):
                continue
            if isinstance(images, list) or tuple(images.shape[-2:]) != tuple(input_hw):
                raise ValueError(f"diagnose needs every image resized to {input_hw}; got mixed or other sizes")
            # every block's output as per-token norms only (B, N); the analysed block's tokens in full
            kw: dict[str, Any] = dict(layers=[out_layer], norm_layers="all", normed=True, keep_inputs=keep_inputs)
            if sinks:
                cap = inspector.run(images, attention_layers="all", queries="all", **kw)
                bg = batch.get("mask")
                bg = patch_background(bg, layout.grid) if isinstance(bg, torch.Tensor) else None
                for i in range(depth):
                    stream.sums["sinks"][i] += sink_sums(cap.attention[i], layout, bg)
            else:
                cap = inspector.run(images, attention_layers=[out_layer], resume=resume[n] if resume else None, **kw)
            b = images.shape[0]
            patch_norms = torch.stack([cap.split_norms(i).patches for i in range(depth)]).cpu()  # (L, B, gh, gw)
            out = cap.split_tokens(out_layer)
            pca = cap.split_tokens("normed" if last else out_layer).patches.cpu()  # (B, gh, gw, C)
            emb = as_grid(store["emb"], layout.grid).cpu()  # (B, gh, gw, C) before the position embedding
            if queries:
                maps = cap.attention_maps(out_layer)
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
                normed_patches=pca,
                images=images.cpu(),
                indices=[int(i) for i in batch["index"]],
                denormalize=denormalize,
                mask=mask,
            )
            if observe is not None:
                observe(n, batch, cap)
            n += 1
            bar.update(b)
    bar.close()
    return stream
