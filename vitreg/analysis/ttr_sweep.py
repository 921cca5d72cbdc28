"""How many register neurons do test-time registers need? The outlier share as top-k grows (Jiang, Dravid et al.:
"raise top-k until the outliers disappear"), and what moving them costs: the final [CLS] feature and, for a model
with a head and labelled images, top-1.

Every point runs the fixed model once over the same images. The outlier share is measured against the *original*
model's threshold (a fixed norm), on the detection layer's patch tokens: the question is how many tokens are still as
high-norm as the artifacts were, not whether a new split can be found.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitreg.analysis.register_neurons import image_batches
from vitreg.errors import ConfigError
from vitreg.models.inspect import Inspector
from vitreg.models.ttr import add_test_time_registers
from vitreg.results.fix import NeuronSearch, SweepPoint, TopKSweep


@dataclass
class _Reference:
    cls: torch.Tensor | None  # (n, C)
    pred: torch.Tensor | None  # (n,)


def _measure(
    model: nn.Module, batches: list, detect: int, threshold: float, new: int, dtype: Any, ref: _Reference | None
) -> tuple[SweepPoint, _Reference]:
    """One pass: the share of outliers, the registers' norm, [CLS] and predictions (``new``: test-time registers,
    the last ``new`` of the model's registers)."""
    inspector = Inspector(model, dtype=dtype)
    above = total = correct = labelled = 0
    peak, reg_norms, feats, preds = 0.0, [], [], []
    for x, y in batches:
        cap = inspector.run(x, layers=[detect], attention_layers=None, normed=True)
        split = cap.split_tokens(detect)
        pn = split.patches.flatten(1, 2).norm(dim=-1)  # (B, P)
        above, total, peak = above + int((pn > threshold).sum()), total + pn.numel(), max(peak, float(pn.max()))
        if new:
            reg_norms.append(split.registers[:, -new:].norm(dim=-1).mean(1))  # (B,)
        cls = cap.split_tokens("normed").cls
        if cls is not None:
            feats.append(cls.cpu())
        out = cap.output
        if out is not None and out.ndim == 2 and out.shape[1] > 1 and int(getattr(model, "num_classes", 0)):
            p = out.argmax(1).cpu()
            preds.append(p)
            if y is not None:
                correct, labelled = correct + int((p == y).sum()), labelled + len(y)
    cls_all = torch.cat(feats) if feats else None
    pred_all = torch.cat(preds) if preds else None
    point = SweepPoint(
        k=0,
        outlier_share=above / total,
        max_patch_norm=peak,
        register_norm=float(torch.cat(reg_norms).mean()) if reg_norms else None,
        cls_cosine=None,
        top1=correct / labelled if labelled else None,
        agreement=None,
    )
    if ref is not None and ref.cls is not None and cls_all is not None:
        point.cls_cosine = float(F.cosine_similarity(cls_all, ref.cls, dim=-1).mean())
    if ref is not None and ref.pred is not None and pred_all is not None:
        point.agreement = float((pred_all == ref.pred).float().mean())
    return point, _Reference(cls_all, pred_all)


def _powers(limit: int) -> list[int]:
    ks, k = [0], 1
    while k < limit:
        ks.append(k)
        k *= 2
    return [*ks, limit] if limit else ks


def sweep_top_k(
    model: nn.Module,
    search: NeuronSearch,
    images: Any,
    *,
    registers: int = 1,
    top_k: int | None = None,
    max_k: int = 64,
    clear: float = 0.05,
    batch_size: int = 32,
    dtype: torch.dtype | None = None,
) -> TopKSweep:
    """The outlier share with the first k neurons of ``search`` moved, for k = 0, 1, 2, 4, ... up to ``max_k``.

    ``top_k=None`` (auto) then bisects to the smallest k whose share is at most ``clear`` x the original share and
    chooses it (or the k with the lowest share when none clears); a given ``top_k`` is measured and chosen as is.
    """
    if search.threshold is None or not search.neurons:
        raise ConfigError(f"nothing to sweep: {search.reason or 'no register neurons'}")
    if not 0 <= clear < 1:
        raise ConfigError(f"clear must be a fraction in [0, 1), got {clear}")
    limit = min(max_k if top_k is None else top_k, len(search))
    if limit < 1:
        raise ConfigError(f"top-k must be >= 1, got {top_k if top_k is not None else max_k}")
    batches = image_batches(images, batch_size)
    detect, threshold = search.detect_layer, float(search.threshold)
    before, ref = _measure(model, batches, detect, threshold, 0, dtype, None)
    sweep = TopKSweep(threshold=threshold, clear=clear, before=before)
    done: dict[int, SweepPoint] = {}

    def at(k: int) -> SweepPoint:
        if k not in done:
            fixed = add_test_time_registers(model, search.neurons[:k], registers)
            done[k], _ = _measure(fixed, batches, detect, threshold, registers, dtype, ref)
            done[k].k = k
        return done[k]

    goal = clear * before.outlier_share
    for k in _powers(limit):
        at(k)
    if top_k is not None:
        sweep.chosen = limit
    else:
        hits = [k for k in sorted(done) if k and done[k].outlier_share <= goal]
        if hits:
            hi = hits[0]
            lo = max(k for k in done if k < hi)  # the largest k measured below hi did not clear
            while hi - lo > 1:  # bisect between two measured powers, taking the share to fall with k there
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if at(mid).outlier_share <= goal else (mid, hi)
            sweep.chosen = hi
        else:
            sweep.chosen = min((k for k in done if k), key=lambda k: (done[k].outlier_share, k))
    sweep.points = [done[k] for k in sorted(done)]
    sweep.cleared = done[sweep.chosen].outlier_share <= goal
    return sweep
