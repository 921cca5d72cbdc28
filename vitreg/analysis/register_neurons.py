"""Find the register neurons of a ViT: the MLP units that write its high-norm artifact tokens (Jiang, Dravid et al.,
2025), and the top-k sweep that shows how many of them test-time registers need.

Two passes over the images (so memory does not grow with the hidden width x tokens x layers):

1. block-output patch norms up to the detection layer. The outlier rule runs on the detection layer's norms (vitreg's
   rules, or ``sigma``: mean + value x std, the paper's heuristic); the *onset* of each layer is the median norm of
   the detection-layer outliers over the median of the other patches at that layer, and the top layer (where the
   outliers first appear) is the first whose onset reaches the geometric mean of 1 and the detection layer's onset
   (half-way to the final ratio, on a log scale), and at least ``min_ratio``.
2. hooks on every block's ``mlp.fc2`` input (the hidden units after the nonlinearity) up to the top layer: per image
   with outliers, the mean |activation| of each unit at the outlier patches (its *score*, then averaged over those
   images), at the other patches (*selectivity* = score / that), and the share of the other patches where the unit
   is below ``SPARSE_LEVEL`` x its outlier mean (*sparsity*, for the optional filter).

A model without outliers (the auto rule finds no second mode, or the tokens above the threshold are not ``min_ratio``
times the median norm) gets no neurons and a ``reason``, never a list of the units that happen to score highest.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from vitreg.analysis.norms import find_threshold
from vitreg.analysis.outlier_rule import check_rule
from vitreg.device import autocast
from vitreg.errors import ConfigError, DataError
from vitreg.models.inspect import Capture, Inspector, stop_after_block, stopped, token_layout
from vitreg.results.fix import NeuronSearch, RegisterNeuron

SPARSE_LEVEL = 0.1  # "inactive" on a patch: below this fraction of the unit's mean |activation| at the outliers
KEEP = 256  # ranked neurons kept in a search (the sweep and neurons.json use the first ones)


# ------------------------------------------------------------------------------------------------ image batches
def image_batches(images: Any, batch_size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(images (B, 3, H, W), labels (B,) or None) batches from a tensor, a list of tensors or of such pairs, or
    loader dicts (with ``image`` and optional ``label``). Materialised once: the analyses here take several passes."""
    if isinstance(images, torch.Tensor):
        t = images.unsqueeze(0) if images.ndim == 3 else images
        return [(t[i : i + batch_size], None) for i in range(0, t.shape[0], batch_size)]
    out: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    for item in images:
        labels = None
        x: Any
        if isinstance(item, dict):
            x, labels = item.get("image"), item.get("label")
            if x is None or (isinstance(x, list) and not x):
                continue  # a batch of bad images only
            if isinstance(x, list):
                raise DataError("test-time registers need every image at the model's size (resize them)")
        elif isinstance(item, tuple):  # already (images, labels)
            x, labels = item
        else:
            x = item
        x = x.unsqueeze(0) if x.ndim == 3 else x
        out.append((x, labels if isinstance(labels, torch.Tensor) else None))
    if not out:
        raise DataError("no usable images: every image was bad or the source was empty")
    return out


def _layer(i: int, depth: int, what: str) -> int:
    j = i + depth if i < 0 else i
    if not 0 <= j < depth:
        raise ConfigError(
            f"{what} {i} is out of range for a model with {depth} blocks (0..{depth - 1}, or -{depth}..-1)"
        )
    return j


# ------------------------------------------------------------------------------------------------ pass 1: norms
def block_norms(cap: Capture, layers: int) -> np.ndarray:
    """(B, layers, P) patch-token norms of blocks 0..layers-1 of one captured batch (captured as tokens or norms)."""
    per = [cap.split_norms(i).patches.flatten(1, 2) for i in range(layers)]  # L x (B, P)
    return torch.stack(per, 1).cpu().numpy()


def _norms(model: nn.Module, batches: list, layers: int, dtype: torch.dtype | None) -> np.ndarray:
    """(n images, layers, P) block-output patch-token norms of blocks 0..layers-1 (the pass stops after them)."""
    inspector = Inspector(model, dtype=dtype)
    out = []
    for x, _ in batches:
        cap = inspector.run(x, layers=None, norm_layers=list(range(layers)), attention_layers=None, normed=False,
                            stop_after=layers - 1)  # fmt: skip
        out.append(block_norms(cap, layers))
    return np.concatenate(out)


def _threshold(norms: np.ndarray, rule: str, value: float | None) -> tuple[float | None, bool | None]:
    if rule == "sigma":
        k = check_rule(rule, value)  # K, default 3
        return float(norms.mean() + k * norms.std()), None
    t = find_threshold(norms, rule, value)
    return t.threshold, t.bimodal


def _onset(norms: np.ndarray, mask: np.ndarray) -> list[float | None]:
    """Per layer: median norm of the detection-layer outliers / median norm of the other patches."""
    out: list[float | None] = []
    for i in range(norms.shape[1]):
        inside, rest = norms[:, i][mask], norms[:, i][~mask]
        out.append(float(np.median(inside) / np.median(rest)) if inside.size and rest.size else None)
    return out


# ------------------------------------------------------------------------------------------------ pass 2: units
class _UnitScores:
    """fc2 pre-hooks that add each unit's activation statistics at the current batch's outlier patches."""

    def __init__(self, model: Any, layers: int, prefix: int):
        self.prefix = prefix
        self.mask: torch.Tensor | None = None  # (B, P) outlier patches of the batch being run
        hidden = [model.blocks[i].mlp.fc2.in_features for i in range(layers)]
        if len(set(hidden)) != 1:
            raise ConfigError(f"blocks have different MLP widths {sorted(set(hidden))}; give top_layer explicitly")
        self.sums = {k: torch.zeros(layers, hidden[0], dtype=torch.float64) for k in ("score", "other", "sparse")}
        self.images = 0
        self.handles = [model.blocks[i].mlp.fc2.register_forward_pre_hook(self._hook(i)) for i in range(layers)]

    def _hook(self, layer: int) -> Any:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            assert self.mask is not None
            a = args[0][:, self.prefix :].float().abs()  # (B, P, H) hidden activations of the patch tokens
            m = self.mask.to(a.device)
            keep = m.any(1)  # (B,) images with outliers
            if not bool(keep.all()):  # (indexing copies the (B, P, H) activations: only when some image has none)
                a, m = a[keep], m[keep]
            inside, other = m.unsqueeze(-1).float(), (~m).unsqueeze(-1).float()  # (B, P, 1)
            n_in = inside.sum(1).clamp(min=1)  # (B, 1)
            n_other = other.sum(1).clamp(min=1)
            mean_in = (a * inside).sum(1) / n_in  # (B, H)
            mean_other = (a * other).sum(1) / n_other
            quiet = ((a < SPARSE_LEVEL * mean_in.unsqueeze(1)).float() * other).sum(1) / n_other  # (B, H)
            for key, v in (("score", mean_in), ("other", mean_other), ("sparse", quiet)):
                self.sums[key][layer] += v.sum(0).double().cpu()

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _score_units(model: Any, batches: list, mask: np.ndarray, layers: int, dtype: torch.dtype | None) -> _UnitScores:
    device = next(model.parameters()).device
    layout = token_layout(model, tuple(batches[0][0].shape[-2:]))
    scores = _UnitScores(model, layers, layout.num_prefix)
    start = 0
    try:
        # the units of blocks 0..layers-1 are all the pass needs: it stops after them
        with torch.inference_mode(), autocast(device, dtype), stop_after_block(model, layers - 1):
            for x, _ in batches:
                scores.mask = torch.from_numpy(mask[start : start + x.shape[0]])
                scores.images += int(scores.mask.any(1).sum())
                start += x.shape[0]
                with stopped():
                    model(x.to(device))
    finally:
        scores.remove()
    return scores


def _rank(scores: _UnitScores, sparse: float | None, keep: int) -> list[RegisterNeuron]:
    n = max(scores.images, 1)
    score = (scores.sums["score"] / n).numpy()  # (L, H)
    other = (scores.sums["other"] / n).numpy()
    quiet = (scores.sums["sparse"] / n).numpy()
    rank = np.where(quiet >= sparse, score, -np.inf) if sparse is not None else score
    order = np.argsort(-rank, axis=None, kind="stable")[:keep]
    out = []
    for flat in order:
        layer, unit = divmod(int(flat), score.shape[1])
        if not np.isfinite(rank[layer, unit]):
            break
        sel = float(score[layer, unit] / other[layer, unit]) if other[layer, unit] > 0 else float("inf")
        out.append(RegisterNeuron(layer, unit, float(score[layer, unit]), sel, float(quiet[layer, unit])))
    return out


# ------------------------------------------------------------------------------------------------ the finder
def find_register_neurons(
    model: nn.Module,
    images: Any,
    *,
    detect_layer: int = -1,
    top_layer: int | None = None,
    rule: str = "auto",
    value: float | None = None,
    sparse: float | None = None,
    min_ratio: float = 2.0,
    keep: int = KEEP,
    batch_size: int = 32,
    dtype: torch.dtype | None = None,
    norms: np.ndarray | None = None,
) -> NeuronSearch:
    """The register neurons of ``model`` (a timm VisionTransformer or Eva), ranked by score.

    ``images``: a tensor (N, 3, H, W), a list of tensors or loader batches, all at one size. Outliers are the patch
    tokens of block ``detect_layer``'s output above the ``rule``'s threshold (``auto``, ``cutoff`` / ``percentile``
    with ``value``, or ``sigma``: mean + value (default 3) x std); units are scored in blocks 0..``top_layer``
    (None: the block where the outliers first appear). ``sparse``: keep only units inactive on at least this share
    of the other patches. A model with no outliers returns an empty search whose ``reason`` says why.
    ``norms``: the (n, detect + 1, P) block-output patch norms of blocks 0..detect (:func:`block_norms`) when a pass
    over the same images already captured them; the first of the two passes is then skipped.
    """
    check_rule(rule, value)  # before any pass over the images
    if sparse is not None and not 0 < sparse <= 1:
        raise ConfigError(f"sparse must be a share in (0, 1], got {sparse}")
    vit: Any = model
    depth = len(vit.blocks)
    detect = _layer(detect_layer, depth, "detect_layer (--detect-layer)")
    batches = image_batches(images, batch_size)
    if norms is None:
        norms = _norms(model, batches, detect + 1, dtype)  # (n, L, P)
    n_images = sum(int(x.shape[0]) for x, _ in batches)
    if norms.ndim != 3 or norms.shape[:2] != (n_images, detect + 1):
        raise ValueError(f"norms must be (images {n_images}, blocks {detect + 1}, patches), got {norms.shape}")
    det = norms[:, detect]  # (n, P)
    threshold, bimodal = _threshold(det, rule, value)
    mask = det > threshold if threshold is not None else np.zeros_like(det, bool)
    share = float(mask.mean())
    ratio = float(det[mask].mean() / np.median(det)) if mask.any() else None
    search = NeuronSearch(
        neurons=[], detect_layer=detect, top_layer=None, rule=rule, value=value, threshold=threshold,
        bimodal=bimodal, outlier_share=share, norm_ratio=ratio, images=int(det.shape[0]),
        images_with_outliers=int(mask.any(1).sum()), onset=_onset(norms, mask),
    )  # fmt: skip
    if threshold is None or not mask.any():
        search.reason = f"no outliers: nothing to move (the {rule} rule finds no outlier tokens in block {detect})"
        return search
    if ratio is not None and ratio < min_ratio:
        search.reason = (
            f"no outliers: nothing to move (the tokens above the {rule} threshold in block {detect} are only "
            f"{ratio:.2f}x the median norm, below {min_ratio:g}x: no high-norm artifacts)"
        )
        return search
    if top_layer is None:
        # where the outliers appear: the first block half-way (geometrically) to their final norm ratio
        bar = max(min_ratio, math.sqrt(search.onset[detect] or min_ratio))
        top = next((i for i, r in enumerate(search.onset) if r is not None and r >= bar), detect)
    else:
        top = _layer(top_layer, depth, "top_layer (--top-layer)")
    search.top_layer = top
    scores = _score_units(vit, batches, mask, top + 1, dtype)
    search.neurons = _rank(scores, sparse, keep)
    if not search.neurons:
        search.reason = f"no unit passes the sparsity filter ({sparse:g} of the other patches inactive)"
    return search
