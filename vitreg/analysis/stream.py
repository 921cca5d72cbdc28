"""Streaming statistics for diagnose: everything accumulates batch by batch into fixed-size arrays, so memory does
not grow with the number of images, and ranks merge by adding their arrays.

The outlier threshold is only known once every image has been seen (the auto and percentile rules need the whole
distribution). So everything that depends on it is kept as a *joint histogram over norm bins* and the threshold is
applied at the end, at a bin edge: per-position counts are (gh, gw, E), neighbour similarities (E, S), background
flags (E, 2). Exact per-bin sums keep the mean norms exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vitreg.analysis.maps import patch_background
from vitreg.analysis.norms import bin_index, default_edges
from vitreg.analysis.registers import attention_similarity
from vitreg.analysis.sinks import SINK_COLUMNS
from vitreg.distributed import all_gather_objects, all_reduce_sum

SIM_BINS = 200  # neighbour-similarity bins on [-1, 1]


@dataclass
class Example:
    """One picture kept for the report (arrays small: grid-sized maps plus the input image)."""

    index: int
    image: np.ndarray  # (H, W, 3) uint8
    norm: np.ndarray  # (gh, gw) patch norms of the analysed block's output
    attention: np.ndarray  # (Q, gh, gw) the analysed block's attention of [CLS] and registers
    mask: np.ndarray | None  # (H, W) segmentation (0 = background), when the source has one
    features: torch.Tensor | None = field(default=None, repr=False)  # (gh, gw, C) patch tokens, until pca is made
    _pca: np.ndarray | None = field(default=None, repr=False)

    @property
    def pca(self) -> np.ndarray:
        """(gh, gw) whitened first principal component of the patch tokens (normed for the last block), made on first
        use: a pass whose pictures are never drawn (an example later displaced, a sweep pass that is not kept) never
        pays for it."""
        if self._pca is None:
            if self.features is None:
                raise ValueError(f"example {self.index} has neither its PCA map nor the features to make it")
            self._pca = first_component(self.features)
            self.features = None
        return self._pca


def first_component(patches: torch.Tensor | np.ndarray) -> np.ndarray:
    """The map of :func:`vitreg.analysis.maps.pca_first_component` (whitened first principal component of one
    image's (H, W, C) patch features, sign fixed so the largest-magnitude score is positive), from the top eigenvector
    alone of the smaller symmetric matrix: the (H*W)^2 Gram matrix when there are fewer patches than channels, else
    the C^2 scatter matrix. For ViT-B/16 this is ~10 ms where the full SVD of the (196, 768) patches takes ~80-600 ms
    on a 2-core CPU, which made the pictures a large share of a diagnose pass."""
    from scipy.linalg import eigh

    if isinstance(patches, torch.Tensor):
        patches = patches.detach().cpu().double().numpy()
    x = np.asarray(patches, np.float64)
    h, w, c = x.shape
    n = h * w
    flat = x.reshape(n, c)
    flat = flat - flat.mean(0, keepdims=True)
    if n < 2 or float(np.abs(flat).max()) == 0.0:
        return np.zeros((h, w), np.float32)
    if n <= c:
        _, vec = eigh(flat @ flat.T, subset_by_index=[n - 1, n - 1])  # (n, 1): the first left singular vector
        score = vec[:, 0]  # the scores up to their scale, which the whitening removes
    else:
        _, vec = eigh(flat.T @ flat, subset_by_index=[c - 1, c - 1])  # (C, 1): the first principal axis
        score = flat @ vec[:, 0]
    sd = score.std()  # population std: the map has exactly unit variance
    score = score / sd if sd > 0 else score * 0
    if score[np.argmax(np.abs(score))] < 0:
        score = -score
    return score.reshape(h, w).astype(np.float32)


@dataclass
class NormStream:
    """Accumulator for one model. ``depth`` blocks, patch ``grid`` (gh, gw), ``registers`` R, ``query_names`` Q.
    ``layer``: the block whose output tokens the output-level statistics use (positions, neighbours, background,
    [CLS] / register norms, pictures; negative counts from the end); the per-block histograms cover every block."""

    depth: int
    grid: tuple[int, int]
    registers: int
    query_names: list[str]
    examples_k: int = 8
    cutoff: float | None = None  # inserted as a histogram edge so a fixed cutoff is applied exactly
    layer: int = -1
    edges: np.ndarray = field(init=False)
    sim_edges: np.ndarray = field(init=False)
    images: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not -self.depth <= self.layer < self.depth:
            raise ValueError(f"layer {self.layer} out of range for {self.depth} blocks")
        self.layer %= self.depth
        self.edges = default_edges(extra=self.cutoff)  # (E+1,)
        self.sim_edges = np.linspace(-1.0, 1.0, SIM_BINS + 1)  # (S+1,)
        e, (gh, gw), r, q = len(self.edges) - 1, self.grid, self.registers, len(self.query_names)
        # every array below is summed over images and over ranks
        self.sums: dict[str, np.ndarray] = {
            "hist_counts": np.zeros((self.depth, e), np.int64),  # patch-token norms per block output
            "hist_sums": np.zeros((self.depth, e), np.float64),  # exact sum of the norms in each bin
            "cls_hist": np.zeros(e, np.int64),
            "cls_sum": np.zeros(1, np.float64),
            "reg_hist": np.zeros((r, e), np.int64),
            "reg_sum": np.zeros(r, np.float64),
            "position_hist": np.zeros((gh, gw, e), np.int64),  # output layer, per grid position
            "neighbor_hist": np.zeros((e, SIM_BINS), np.int64),  # output norm bin x input-embedding similarity
            "neighbor_sum": np.zeros(e, np.float64),  # exact sum of similarities per norm bin
            "background_hist": np.zeros((e, 2), np.int64),  # output norm bin x (object, background)
            "attention_sum": np.zeros((q, gh, gw), np.float64),
            "register_similarity_sum": np.zeros((r, r), np.float64),
            "register_output_similarity_sum": np.zeros((r, r), np.float64),  # cosine of the register output tokens
            "counts": np.zeros(2, np.int64),  # images, images with a mask
            "sinks": np.zeros((self.depth, len(SINK_COLUMNS)), np.float64),  # per block, with sinks=True
        }
        self.layer_max = np.zeros(self.depth, np.float64)

    # -- accumulation ---------------------------------------------------------------------------------------------

    def add(
        self,
        patch_norms: list[torch.Tensor] | torch.Tensor,
        cls_norm: torch.Tensor | None,
        reg_norms: torch.Tensor,
        neighbor_sim: torch.Tensor,
        attention: torch.Tensor,
        normed_patches: torch.Tensor,
        images: torch.Tensor,
        indices: list[int],
        denormalize: Any,
        mask: torch.Tensor | None = None,
        reg_tokens: torch.Tensor | None = None,
    ) -> None:
        """One batch of B images. ``patch_norms``: per block (B, gh, gw) norms before the final norm (a list, or one
        (L, B, gh, gw) tensor); from here on everything is of the analysed block ``layer``: ``cls_norm`` (B,) or
        None; ``reg_norms`` (B, R); ``neighbor_sim`` (B, gh, gw) (of the input embeddings); ``attention`` (B, Q, gh,
        gw) attention of the query tokens; ``normed_patches`` (B, gh, gw, C) the patch tokens for PCA (after the
        final norm for the last block);
        ``images`` (B, 3, H, W) normalised input; ``denormalize`` (3, H, W) -> uint8 (H, W, 3); ``mask`` (B, H, W)
        with 0 = background, or None; ``reg_tokens`` (B, R, C) the registers' output tokens (their similarity)."""
        s, e = self.sums, len(self.edges) - 1
        b = images.shape[0]
        norms = patch_norms if isinstance(patch_norms, torch.Tensor) else torch.stack(list(patch_norms))
        if norms.shape[0] != self.depth:
            raise ValueError(f"expected the patch norms of {self.depth} blocks, got {norms.shape[0]}")
        v = norms.double().reshape(self.depth, -1).numpy()  # (L, B*gh*gw)
        idx = bin_index(v, self.edges)  # (L, B*gh*gw)
        # one bincount for every block: block i's bins are offset by i*E (each bin sums its values in input order,
        # as a bincount per block would)
        flat = (idx + np.arange(self.depth)[:, None] * e).ravel()
        s["hist_counts"] += np.bincount(flat, minlength=self.depth * e).reshape(self.depth, e)
        s["hist_sums"] += np.bincount(flat, weights=v.ravel(), minlength=self.depth * e).reshape(self.depth, e)
        if v.shape[1]:
            self.layer_max = np.maximum(self.layer_max, v.max(1))
        gh, gw = self.grid
        out = v[self.layer].reshape(b, gh, gw)  # (B, gh, gw)
        out_idx = idx[self.layer].reshape(b, gh, gw)
        pos = np.arange(gh * gw).reshape(1, gh, gw)
        s["position_hist"] += np.bincount((pos * e + out_idx).ravel(), minlength=gh * gw * e).reshape(gh, gw, e)
        sim = neighbor_sim.double().numpy()  # (B, gh, gw)
        ok = np.isfinite(sim)
        sim_idx = np.clip(np.searchsorted(self.sim_edges, sim[ok], side="right") - 1, 0, SIM_BINS - 1)
        s["neighbor_hist"] += np.bincount(out_idx[ok] * SIM_BINS + sim_idx, minlength=e * SIM_BINS).reshape(e, SIM_BINS)
        s["neighbor_sum"] += np.bincount(out_idx[ok], weights=sim[ok], minlength=e)
        if cls_norm is not None:
            c = cls_norm.double().numpy()
            s["cls_hist"] += np.bincount(bin_index(c, self.edges), minlength=e)
            s["cls_sum"] += c.sum()
        if self.registers:
            rn = reg_norms.double().numpy()  # (B, R)
            for r in range(self.registers):
                s["reg_hist"][r] += np.bincount(bin_index(rn[:, r], self.edges), minlength=e)
            s["reg_sum"] += rn.sum(0)
        if attention.shape[1]:
            s["attention_sum"] += attention.double().sum(0).numpy()
        if self.registers:
            reg_maps = attention[:, len(self.query_names) - self.registers :]  # (B, R, gh, gw): registers come last
            s["register_similarity_sum"] += attention_similarity(reg_maps).sum(0).numpy()
            if reg_tokens is not None:
                unit = torch.nn.functional.normalize(reg_tokens.double(), dim=-1)  # (B, R, C)
                s["register_output_similarity_sum"] += (unit @ unit.transpose(1, 2)).sum(0).numpy()
        if mask is not None:
            bg = patch_background(mask, self.grid).numpy().astype(np.int64)  # (B, gh, gw)
            s["background_hist"] += np.bincount((out_idx * 2 + bg).ravel(), minlength=e * 2).reshape(e, 2)
            s["counts"][1] += b
        s["counts"][0] += b
        self.images += b
        self._keep_examples(indices, out, attention, normed_patches, images, denormalize, mask)

    def _keep_examples(self, indices, out, attention, normed_patches, images, denormalize, mask) -> None:
        """Keep the K lowest dataset indices seen: deterministic, so any sharding over ranks keeps the same set."""
        for j, index in enumerate(indices):
            if self.examples_k == 0:
                return  # --examples 0: no pictures
            if len(self.examples) >= self.examples_k and index >= self.examples[-1].index:
                continue
            self.examples.append(
                Example(
                    index=int(index),
                    image=denormalize(images[j]),
                    norm=out[j].astype(np.float32),
                    attention=attention[j].float().numpy(),
                    mask=None if mask is None else mask[j].numpy().astype(np.int32),
                    features=normed_patches[j].clone(),  # not a view: the batch's tokens are freed
                )
            )
            self.examples.sort(key=lambda x: x.index)
            del self.examples[self.examples_k :]

    def finish_examples(self) -> None:
        """Make the kept examples' PCA maps. BLAS on one thread: these are small products, and right after a pass
        torch's worker threads still hold the cores, so a multi-threaded BLAS waits on them (~10x slower here)."""
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, user_api="blas"):
            for ex in self.examples:
                _ = ex.pca

    # -- merging over ranks ---------------------------------------------------------------------------------------

    def merge_ranks(self) -> None:
        """Add every rank's sums into every rank (no-op without torchrun); gather examples, maxima and bad files."""
        for key, arr in self.sums.items():
            self.sums[key] = np.asarray(all_reduce_sum(arr))
        self.finish_examples()  # here, for the kept examples only, so ranks exchange small maps
        gathered: list[Any] = all_gather_objects((self.layer_max, self.examples, self.bad))
        self.layer_max = np.max(np.stack([g[0] for g in gathered]), axis=0)
        examples = [ex for g in gathered for ex in g[1]]
        self.examples = sorted(examples, key=lambda x: x.index)[: self.examples_k]
        self.bad = [b for g in gathered for b in g[2]]
        self.images = int(self.sums["counts"][0])
