"""How many register neurons do test-time registers need? The outlier share as top-k grows (Jiang, Dravid et al.:
"raise top-k until the outliers disappear"), and what moving them costs: the final [CLS] feature and, for a model
with a head and labelled images, top-1.

Every point runs the fixed model once over the same images. The outlier share is measured against the *original*
model's threshold (a fixed norm), on the detection layer's patch tokens: the question is how many tokens are still as
high-norm as the artifacts were, not whether a new split can be found.

Work shared between the passes, with the same numbers as running each alone:

- the original model's point (``before``) comes from a pass the caller already ran (`vitreg fix` measures it in the
  pass that also finds the outliers and diagnoses the original), through a :class:`SweepMeter`;
- every fixed model (k >= 1) computes exactly what the k = 0 model (the extra tokens alone) computes up to the first
  block with a moved neuron. The k = 0 pass keeps the inputs of those blocks (within ``cache_bytes``) and the later
  passes start there (:class:`vitreg.models.inspect.Resume`): for OpenAI's CLIP ViT-B/16, whose first register
  neurons sit in block 6, the first points skip half of the blocks.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitreg.analysis.register_neurons import image_batches
from vitreg.errors import ConfigError
from vitreg.models.inspect import Capture, Inspector, Resume, token_layout
from vitreg.models.ttr import attach, has_test_time_registers
from vitreg.results.fix import NeuronSearch, SweepPoint, TopKSweep

CACHE_BYTES = 512 * 2**20  # block inputs kept from the k = 0 pass for the later passes to start from

#: ``on_batch(i, capture, labels)``: what a pass reports for its i-th batch
OnBatch = Callable[[int, Capture, torch.Tensor | None], None]
#: ``run_pass(model, k, on_batch, keep_inputs, resume)``: one pass of ``model`` (the k-neuron fixed model) over the
#: sweep's images, its captures holding the detection block's tokens and the normed tokens, batch by batch in order;
#: ``keep_inputs`` (block indices) and ``resume`` (one Resume or None per batch) go to ``Inspector.run``
PassRunner = Callable[[nn.Module, int, OnBatch, Sequence[int], Sequence[Resume | None] | None], None]


@dataclass
class SweepReference:
    """The original model's final [CLS] (n, C) and predicted classes (n,), the points' reference."""

    cls: torch.Tensor | None
    pred: torch.Tensor | None


@dataclass
class SweepMeter:
    """One sweep point, accumulated batch by batch from captures of block ``detect``'s tokens and the normed tokens
    (``new``: test-time registers, the last ``new`` of the model's registers). The threshold is applied at the end,
    so the original model can be measured in a pass run before its threshold was known."""

    detect: int
    new: int
    classify: bool  # the model has a classification head: predictions (and top-1 with labels) are measured
    norms: list[torch.Tensor] = field(default_factory=list)  # (B, P) detection-block patch norms per batch
    reg_norms: list[torch.Tensor] = field(default_factory=list)  # (B,) mean norm of the test-time registers
    feats: list[torch.Tensor] = field(default_factory=list)  # (B, C) final normed [CLS]
    preds: list[torch.Tensor] = field(default_factory=list)  # (B,)
    labels: list[torch.Tensor | None] = field(default_factory=list)

    @classmethod
    def of(cls, model: nn.Module, detect: int, new: int) -> SweepMeter:
        return cls(detect=detect, new=new, classify=bool(int(getattr(model, "num_classes", 0))))

    def add(self, cap: Capture, labels: torch.Tensor | None) -> None:
        split = cap.split_tokens(self.detect)
        self.norms.append(split.patches.flatten(1, 2).norm(dim=-1))  # (B, P)
        if self.new:
            self.reg_norms.append(split.registers[:, -self.new :].norm(dim=-1).mean(1))  # (B,)
        cls = cap.split_tokens("normed").cls
        if cls is not None:
            self.feats.append(cls.cpu())
        out = cap.output
        if out is not None and out.ndim == 2 and out.shape[1] > 1 and self.classify:
            self.preds.append(out.argmax(1).cpu())
            self.labels.append(labels)

    def point(self, threshold: float, ref: SweepReference | None) -> tuple[SweepPoint, SweepReference]:
        above = total = correct = labelled = 0
        peak = 0.0
        for pn in self.norms:
            above, total, peak = above + int((pn > threshold).sum()), total + pn.numel(), max(peak, float(pn.max()))
        for p, y in zip(self.preds, self.labels, strict=True):
            if y is not None:
                correct, labelled = correct + int((p == y).sum()), labelled + len(y)
        cls_all = torch.cat(self.feats) if self.feats else None
        pred_all = torch.cat(self.preds) if self.preds else None
        point = SweepPoint(
            k=0,
            outlier_share=above / total,
            max_patch_norm=peak,
            register_norm=float(torch.cat(self.reg_norms).mean()) if self.reg_norms else None,
            cls_cosine=None,
            top1=correct / labelled if labelled else None,
            agreement=None,
        )
        if ref is not None and ref.cls is not None and cls_all is not None:
            point.cls_cosine = float(F.cosine_similarity(cls_all, ref.cls, dim=-1).mean())
        if ref is not None and ref.pred is not None and pred_all is not None:
            point.agreement = float((pred_all == ref.pred).float().mean())
        return point, SweepReference(cls_all, pred_all)


def inspector_passes(batches: list, detect: int, dtype: torch.dtype | None) -> PassRunner:
    """The plain pass runner: an Inspector pass over (images, labels) ``batches`` capturing what a point needs."""

    def run(model: nn.Module, _k: int, on_batch: OnBatch, keep: Sequence[int], resume: Any) -> None:
        inspector = Inspector(model, dtype=dtype)
        for i, (x, y) in enumerate(batches):
            r = resume[i] if resume else None
            cap = inspector.run(x, layers=[detect], attention_layers=None, normed=True, keep_inputs=keep, resume=r)
            on_batch(i, cap, y)

    return run


def _measure(
    model: nn.Module, batches: list, detect: int, threshold: float, new: int, dtype: Any, ref: SweepReference | None
) -> tuple[SweepPoint, SweepReference]:
    """One plain pass: the share of outliers, the registers' norm, [CLS] and predictions."""
    meter = SweepMeter.of(model, detect, new)
    inspector_passes(batches, detect, dtype)(model, 0, lambda _i, cap, y: meter.add(cap, y), (), None)
    return meter.point(threshold, ref)


def _fixed(model: nn.Module, neurons: Sequence[Any], registers: int) -> nn.Module:
    """:func:`vitreg.models.ttr.add_test_time_registers` without copying the weights: the copy shares every parameter
    and buffer with ``model`` (``attach`` gives it a new register token and position embedding and adds hooks, so
    ``model`` is untouched), instead of a copy of a ViT-B's 350 MB for each k."""
    if has_test_time_registers(model):
        raise ConfigError("this model already has test-time registers; add them to the original model")
    shared: dict[int, Any] = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return attach(copy.deepcopy(model, shared), neurons, registers)


def _powers(limit: int) -> list[int]:
    ks, k = [0], 1
    while k < limit:
        ks.append(k)
        k *= 2
    return [*ks, limit] if limit else ks


class _PrefixCache:
    """Inputs of the blocks where the fixed models first differ from the k = 0 model, kept from the k = 0 pass per
    batch, with that pass's per-token norms of the blocks before them (for passes that capture every block's norms).
    ``start(k)``: where the k-neuron model's pass can start (0: from the beginning)."""

    def __init__(self, search: NeuronSearch, limit: int, detect: int, budget: int, per_block: int):
        # the first block with a moved neuron, for every k the sweep may measure (it never runs past the detection
        # block: the pass captures that block's tokens)
        firsts, low = [], detect
        for n in search.neurons[:limit]:
            low = min(low, n.layer)
            firsts.append(low)
        self.first = firsts  # first[k - 1]: for k neurons
        kept, used = [], 0
        for b in sorted({f for f in firsts if f > 0}, reverse=True):  # the later the block, the more a pass skips
            if used + per_block <= budget:
                kept.append(b)
                used += per_block
        self.blocks = sorted(kept)
        self.inputs: list[dict[int, torch.Tensor]] = []
        self.norms: list[dict[int, torch.Tensor]] = []

    def keep(self, i: int, cap: Capture) -> None:
        top = max(self.blocks, default=0)
        self.inputs.append({b: cap.inputs[b] for b in self.blocks})
        self.norms.append({j: n for j, n in cap.norms.items() if j < top})
        assert len(self.inputs) == i + 1, "passes report their batches in order"

    def start(self, k: int) -> int:
        if k < 1 or not self.inputs:
            return 0
        return max((b for b in self.blocks if b <= self.first[k - 1]), default=0)

    def resume(self, k: int) -> list[Resume | None] | None:
        b = self.start(k)
        if not b:
            return None
        return [
            Resume(block=b, tokens=x[b], norms={j: v for j, v in n.items() if j < b})
            for x, n in zip(self.inputs, self.norms, strict=True)
        ]


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
    before: tuple[SweepPoint, SweepReference] | None = None,
    run_pass: PassRunner | None = None,
    cache_bytes: int = CACHE_BYTES,
) -> TopKSweep:
    """The outlier share with the first k neurons of ``search`` moved, for k = 0, 1, 2, 4, ... up to ``max_k``.

    ``top_k=None`` (auto) then bisects to the smallest k whose share is at most ``clear`` x the original share and
    chooses it (or the k with the lowest share when none clears); a given ``top_k`` is measured and chosen as is.
    ``before``: the original model's point and reference, when a pass over the same images already measured them
    (:meth:`SweepMeter.point`); ``run_pass``: how to run one pass (default :func:`inspector_passes` over ``images``),
    e.g. one that also keeps each pass's diagnosis. ``cache_bytes``: memory for the block inputs the passes share.
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
    if before is None:
        before = _measure(model, batches, detect, threshold, 0, dtype, None)
    point0, ref = before
    sweep = TopKSweep(threshold=threshold, clear=clear, before=point0)
    runner = run_pass or inspector_passes(batches, detect, dtype)
    vit: Any = model
    layout = token_layout(model, tuple(batches[0][0].shape[-2:]))
    images_n = sum(int(x.shape[0]) for x, _ in batches)
    per_block = images_n * (layout.num_tokens + registers) * int(vit.embed_dim) * 4  # float32 block inputs
    cache = _PrefixCache(search, limit, detect, cache_bytes, per_block)
    done: dict[int, SweepPoint] = {}

    def at(k: int) -> SweepPoint:
        if k not in done:
            fixed = _fixed(model, search.neurons[:k], registers)
            meter = SweepMeter.of(fixed, detect, registers)
            keep = cache.blocks if k == 0 else []

            def on_batch(i: int, cap: Capture, y: torch.Tensor | None) -> None:
                meter.add(cap, y)
                if k == 0:
                    cache.keep(i, cap)

            runner(fixed, k, on_batch, keep, cache.resume(k))
            done[k], _ = meter.point(threshold, ref)
            done[k].k = k
        return done[k]

    goal = clear * point0.outlier_share
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
