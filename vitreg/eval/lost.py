"""LOST object discovery (Siméoni et al. 2021) on frozen ViT patch features, scored with CorLoc.

For one image with patch features F (N, C) on an (h, w) grid:

1. A = F F^T + bias (N, N): patch-to-patch correlations; an optional L2 normalisation of F first (cosine similarity).
   The bias shifts every correlation: the registers paper adds one to compensate for features whose dot products are
   all positive or all negative, which makes "positively correlated" meaningless.
2. degree = number of positive correlations of each patch, sum(A > 0, -1): background patches correlate with much of
   the image, an object's patches with few, so the seed is the patch of lowest degree.
3. expansion: among the k lowest-degree patches (k = 100), keep those positively correlated with the seed,
   then mask = sum over that set of A[set, :] > 0 (the patches that correlate positively with the seed set overall).
4. box = the bounding box of the 4-connected component of the mask containing the seed, patch coords -> pixels.

Only patch tokens form the graph: [CLS] and registers are split off by the token layout, never by slicing.
Images with the same grid are batched, and processed in chunks whose (B, N, N) Gram matrices fit in cache.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.ndimage
import torch
import torch.nn.functional as F

from vitreg.errors import ConfigError, DataError
from vitreg.eval.boxes import best_iou, corloc
from vitreg.eval.features import progress_bar
from vitreg.models import Inspector, split_tokens
from vitreg.models.inspect import TokenLayout
from vitreg.models.presets import patch_size_of
from vitreg.results.diagnose import BadImage
from vitreg.results.lost import Corloc, LostSettings

logger = logging.getLogger(__name__)

FeatureKind = Literal["k", "q", "v", "tokens"]
FEATURE_KINDS: tuple[str, ...] = ("k", "q", "v", "tokens")
GRAM_BUDGET = 1 << 30  # bytes for the (B, N, N) float32 Gram matrices of one chunk of images
CACHE_BUDGET = 4 << 20  # bytes of Gram matrices processed at once inside lost_from_patches (a few MB of cache)


@dataclass
class LostOutput:
    boxes: np.ndarray  # float32 (B, 4) xyxy in pixels of the model input
    patch_boxes: np.ndarray  # int64 (B, 4) xyxy in patch units (exclusive right/bottom)
    seeds: np.ndarray  # int64 (B, 2) (row, col) of the seed patch
    masks: np.ndarray  # bool (B, h, w) the expanded mask before the connected component
    degree: np.ndarray  # int64 (B, h, w) number of positive correlations per patch
    seed_outside_mask: np.ndarray  # bool (B,) the seed's own mask value was <= 0; box = the seed patch alone


def _seed_and_mask(f: torch.Tensor, k: int, bias: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 1-3 for a chunk of images f (B, N, C): seed (B,), degree (B, N) and the expanded mask (B, N)."""
    b, n, _ = f.shape
    a = torch.baddbmm(torch.full((1, 1, 1), bias), f, f.transpose(1, 2))  # (B, N, N) A = F F^T + bias
    degree = (a > 0).sum(-1)  # (B, N)
    order = torch.argsort(degree, dim=-1, stable=True)  # (B, N) ascending; ties broken by patch index
    potentials = order[:, : min(k, n)]  # (B, k)
    seed = order[:, 0]  # (B,)
    similar = torch.gather(a[torch.arange(b), seed], 1, potentials) > 0  # (B, k) potentials correlated with the seed
    # sum of the rows A[p, :] over the similar potentials p, as one (1, N) x (N, N) product per image
    weights = torch.zeros(b, n).scatter_(1, potentials, similar.float())  # (B, N)
    score = torch.bmm(weights.unsqueeze(1), a).squeeze(1)  # (B, N)
    return seed, degree, score > 0


def lost_from_patches(
    patches: torch.Tensor,
    patch_size: tuple[int, int] | int,
    k: int = 100,
    bias: float = 0.0,
    normalize: bool = False,
) -> LostOutput:
    """LOST on patch features ``patches`` (B, h, w, C) of B images with the same grid; ``patch_size`` (ph, pw)."""
    if patches.ndim != 4:
        raise ValueError(f"expected patch features (B, h, w, C), got shape {tuple(patches.shape)}")
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    b, h, w, c = patches.shape
    n = h * w
    f = patches.reshape(b, n, c).float()  # (B, N, C)
    if normalize:
        f = F.normalize(f, dim=-1)
    # Images go through in chunks whose Gram matrices fit in cache: one (B, N, N) product over a whole batch is
    # memory-bound and can be slower than a loop of single images on CPUs with small caches.
    step = max(1, CACHE_BUDGET // (4 * n * n))
    parts = [_seed_and_mask(f[i : i + step], int(k), float(bias)) for i in range(0, b, step)]
    seed = torch.cat([p[0] for p in parts])  # (B,)
    degree = torch.cat([p[1] for p in parts])  # (B, N)
    mask = torch.cat([p[2] for p in parts]).reshape(b, h, w).numpy()

    seeds = np.stack([(seed // w).numpy(), (seed % w).numpy()], 1)  # (B, 2) row, col
    patch_boxes = np.zeros((b, 4), np.int64)
    outside = np.zeros(b, bool)
    for i in range(b):
        r, col = seeds[i]
        labels, _ = scipy.ndimage.label(mask[i])  # 4-connectivity, like LOST
        cc = labels[r, col]
        if cc == 0:
            # The seed's own expanded score is not positive (possible with a negative bias): LOST has no component
            # to take; keep the seed patch so the image still gets a (poor) box, and count it.
            outside[i] = True
            patch_boxes[i] = (col, r, col + 1, r + 1)
            continue
        ys, xs = np.nonzero(labels == cc)
        patch_boxes[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    boxes = (patch_boxes * np.array([pw, ph, pw, ph])).astype(np.float32)
    return LostOutput(
        boxes=boxes,
        patch_boxes=patch_boxes,
        seeds=seeds.astype(np.int64),
        masks=mask,
        degree=degree.reshape(b, h, w).numpy().astype(np.int64),
        seed_outside_mask=outside,
    )


def lost_from_tokens(tokens: torch.Tensor, layout: TokenLayout, patch_size: tuple[int, int] | int, **kw) -> LostOutput:
    """LOST on a full token sequence (B, N_tokens, C): [CLS] and registers are dropped via the layout."""
    return lost_from_patches(split_tokens(tokens, layout).patches, patch_size, **kw)


def extract_features(
    inspector: Inspector, images: torch.Tensor, layer: int, kind: FeatureKind = "k"
) -> tuple[torch.Tensor, TokenLayout]:
    """Features of ``layer`` for images (B, 3, H, W): keys / queries / values of all heads concatenated, or the block
    output tokens; returns the full sequence (B, N_tokens, C) and its layout."""
    if kind not in FEATURE_KINDS:
        raise ConfigError(f"unknown feature type {kind!r}; expected one of {', '.join(FEATURE_KINDS)}")
    depth = inspector.depth
    if not -depth <= layer < depth:
        raise ConfigError(f"layer {layer} out of range for a model with {depth} blocks")
    layer = layer % depth
    if kind == "tokens":
        cap = inspector.run(images, layers=[layer], attention_layers=None, normed=False)
        return cap.tokens[layer], cap.layout
    cap = inspector.run(images, layers=None, attention_layers=None, qkv_layers=[layer], normed=False)
    t = getattr(cap.qkv[layer], kind)  # (B, heads, N, hd)
    b, heads, n, hd = t.shape
    return t.permute(0, 2, 1, 3).reshape(b, n, heads * hd), cap.layout  # (B, N, heads * hd)


def _concat(outs: list[LostOutput]) -> LostOutput:
    if len(outs) == 1:
        return outs[0]
    return LostOutput(*(np.concatenate([getattr(o, f) for o in outs]) for f in LostOutput.__dataclass_fields__))


def _groups(images: torch.Tensor | list[torch.Tensor]) -> list[tuple[list[int], torch.Tensor]]:
    """Split a batch into stacks of equal-shape images: [(positions in the batch, (b, 3, H, W))]."""
    if isinstance(images, torch.Tensor):
        return [(list(range(images.shape[0])), images)]
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(images):
        by_shape.setdefault(tuple(im.shape), []).append(i)
    return [(idx, torch.stack([images[i] for i in idx])) for idx in by_shape.values()]


@dataclass
class _Tally:
    """What LOST on one feature kind accumulates over the images."""

    biases: list[float]
    per_image: list[dict] = field(default_factory=list)
    preds: dict[float, list[np.ndarray]] = field(default_factory=dict)
    outside: dict[float, int] = field(default_factory=dict)
    ex: dict[str, list] = field(
        default_factory=lambda: {k: [] for k in ("image", "mask", "degree", "box", "gt", "seed")}
    )

    def __post_init__(self) -> None:
        self.preds = {bb: [] for bb in self.biases}
        self.outside = dict.fromkeys(self.biases, 0)


@dataclass(kw_only=True)
class LostRun:
    """One feature kind's LOST over a dataset: the fields of a :class:`~vitreg.results.lost.LostResult` that come
    from the images, and the first images' arrays (``examples``: saved as NPZ by the job, not in lost.json)."""

    settings: LostSettings
    results: list[Corloc]
    images: int
    bad_images: list[BadImage]
    per_image: list[dict[str, Any]]
    examples: dict[str, list]


def run_lost(
    model: torch.nn.Module,
    loader,
    *,
    layer: int = -1,
    kind: FeatureKind | Sequence[FeatureKind] = "k",
    k: int = 100,
    biases: Sequence[float] = (0.0,),
    normalize: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    examples: int = 0,
) -> Any:
    """LOST over every image of ``loader`` (batches with ``image`` and ``boxes``) for each bias in ``biases``.

    Returns a :class:`LostRun`: the settings, CorLoc per bias, the per-image boxes and best IoU per bias, the skipped
    files, and the arrays of the first ``examples`` images. ``kind`` a list of feature kinds: one run per kind
    (``{kind: LostRun}``), from one forward per image (the keys and values of a layer come from the same capture).
    """
    kinds = [kind] if isinstance(kind, str) else list(kind)
    inspector = Inspector(model, dtype=dtype)
    patch = patch_size_of(model)
    biases = [float(x) for x in biases]
    tallies: dict[str, _Tally] = {kd: _Tally(biases) for kd in kinds}
    gts: list[np.ndarray] = []
    bad: list[tuple[str, str]] = []
    bar = progress_bar(loader, "LOST")
    for batch in loader:
        bad.extend(batch.get("bad", []))
        bar.update(len(batch.get("path", [])) + len(batch.get("bad", [])))
        if not len(batch.get("path", [])):
            continue
        for pos, imgs in _groups(batch["image"]):
            features, layout = extract_many(inspector, imgs.to(device), layer, kinds)
            batch_gts = [np.asarray(batch["boxes"][i], np.float32).reshape(-1, 4) for i in pos]
            gts.extend(batch_gts)
            for kd, tokens in features.items():
                _tally(tallies[kd], tokens.cpu(), layout, patch, k, normalize, batch, pos, imgs, batch_gts, examples)
    bar.close()
    if not gts:
        raise DataError("no usable images: every image was bad or the dataset was empty")
    out = {}
    for kd, t in tallies.items():
        results = [Corloc(bias=bb, seed_outside_mask=t.outside[bb], **corloc(t.preds[bb], gts)) for bb in biases]
        settings = LostSettings(layer=layer % inspector.depth, features=kd, k=k, normalize=normalize,
                                patch_size=list(patch))  # fmt: skip
        out[kd] = LostRun(
            settings=settings,
            results=results,
            images=len(gts),
            bad_images=[BadImage(path=p, reason=r) for p, r in bad],
            per_image=t.per_image,
            examples=t.ex,
        )
    return out[kinds[0]] if isinstance(kind, str) else out


def extract_many(
    inspector: Inspector, images: torch.Tensor, layer: int, kinds: Sequence[FeatureKind]
) -> tuple[dict[str, torch.Tensor], TokenLayout]:
    """:func:`extract_features` for several kinds from one capture: {kind: (B, N_tokens, C)} and the layout."""
    if len(kinds) == 1:
        tokens, layout = extract_features(inspector, images, layer, kinds[0])
        return {kinds[0]: tokens}, layout
    for kd in kinds:
        if kd not in FEATURE_KINDS:
            raise ConfigError(f"unknown feature type {kd!r}; expected one of {', '.join(FEATURE_KINDS)}")
    depth = inspector.depth
    if not -depth <= layer < depth:
        raise ConfigError(f"layer {layer} out of range for a model with {depth} blocks")
    layer = layer % depth
    want_tokens = "tokens" in kinds
    cap = inspector.run(
        images, layers=[layer] if want_tokens else None, attention_layers=None, qkv_layers=[layer], normed=False
    )
    out: dict[str, torch.Tensor] = {}
    for kd in kinds:
        if kd == "tokens":
            out[kd] = cap.tokens[layer]
            continue
        t = getattr(cap.qkv[layer], kd)  # (B, heads, N, hd)
        b, heads, n, hd = t.shape
        out[kd] = t.permute(0, 2, 1, 3).reshape(b, n, heads * hd)
    return out, cap.layout


def _tally(
    t: _Tally,
    tokens: torch.Tensor,
    layout: TokenLayout,
    patch: tuple[int, int],
    k: int,
    normalize: bool,
    batch: dict,
    pos: list[int],
    imgs: torch.Tensor,
    gts: list[np.ndarray],
    examples: int,
) -> None:
    """LOST on one stack of images' features (B, N_tokens, C) for every bias, added to ``t``."""
    # Full-resolution images with small patches have many thousands of patches: bound the (B, N, N) memory.
    chunk = max(1, GRAM_BUDGET // (4 * layout.num_patches**2))
    outs = {
        bb: _concat(
            [
                lost_from_tokens(tokens[s : s + chunk], layout, patch, k=k, bias=bb, normalize=normalize)
                for s in range(0, tokens.shape[0], chunk)
            ]
        )
        for bb in t.biases
    }
    for j, i in enumerate(pos):
        gt = gts[j]
        rec = dict(path=batch["path"][i], size=[int(imgs.shape[-1]), int(imgs.shape[-2])], gt_boxes=len(gt))
        for bb, out in outs.items():
            t.preds[bb].append(out.boxes[j])
            t.outside[bb] += int(out.seed_outside_mask[j])
            rec[f"bias={bb:g}"] = dict(box=out.boxes[j].tolist(), best_iou=best_iou(out.boxes[j], gt))
        t.per_image.append(rec)
        if len(t.ex["image"]) < examples:
            out0 = outs[t.biases[0]]
            t.ex["image"].append(imgs[j].numpy())
            t.ex["mask"].append(out0.masks[j])
            t.ex["degree"].append(out0.degree[j])
            t.ex["box"].append(out0.boxes[j])
            t.ex["gt"].append(gt)
            t.ex["seed"].append(out0.seeds[j])
