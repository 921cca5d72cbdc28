"""Turn a merged :class:`NormStream` into the run directory's :class:`~vitreg.results.diagnose.ModelResult` (the
dataclass is the schema: built directly, never a dict that must match it) and arrays (NPZ), and say in one sentence
what the outliers look like."""

from __future__ import annotations

import numpy as np

from vitreg.analysis.norms import (
    Threshold,
    find_threshold_from_histogram,
    histogram_quantile,
    outlier_stats_from_histogram,
    snap_threshold,
)
from vitreg.analysis.outlier_rule import OutlierRule
from vitreg.analysis.registers import mean_offdiag
from vitreg.analysis.sinks import sink_summary
from vitreg.analysis.stream import NormStream
from vitreg.results.diagnose import (
    BadImage,
    LayerStats,
    Masks,
    ModelResult,
    Neighbors,
    OutlierStats,
    OutputStats,
    Positions,
    RegisterAnalysis,
    Rule,
)

STRONGEST_DEFINITION = (
    "the block where the auto rule finds an outlier mode (bimodal, a minority high mode) and those outliers carry the "
    "largest share of the block's total patch-token norm: sum of outlier norms / sum of all patch norms, exact from "
    "the per-bin sums (= r x q / (1 + r x (q - 1)) for outlier share r and norm ratio q: many outliers and high ones "
    "both count); the earliest on a tie; none when no block is bimodal"
)

# verdict thresholds: a redundant-share or background-share this far from its no-preference baseline counts
REDUNDANT_MARGIN = 0.1  # baseline 0.5: half of the normals are above their own median by definition
BACKGROUND_MARGIN = 0.05


def _cut(threshold: float | None, edges: np.ndarray) -> tuple[int, float | None]:
    """(first outlier bin, applied threshold): binned statistics apply the threshold at the nearest edge."""
    if threshold is None:
        return len(edges) - 1, None
    i, value = snap_threshold(threshold, edges)
    return min(i, len(edges) - 1), value


def _rule_for(counts: np.ndarray, edges: np.ndarray, rule: str, value: float | None) -> tuple[Threshold, Threshold]:
    """(the chosen rule's threshold, the auto rule's threshold): the auto test always runs, for the bimodality."""
    auto = find_threshold_from_histogram(counts, edges, "auto")
    chosen = auto if rule == "auto" else find_threshold_from_histogram(counts, edges, rule, value)
    return chosen, auto


def _share_above(counts: np.ndarray, edges: np.ndarray, x: float) -> float | None:
    """Share of histogrammed values above ``x``, linear inside the bin that holds ``x``."""
    n = counts.sum()
    if n <= 0:
        return None
    i = int(np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(counts) - 1))
    frac_above = (edges[i + 1] - x) / (edges[i + 1] - edges[i])
    return float((counts[i + 1 :].sum() + counts[i] * np.clip(frac_above, 0, 1)) / n)


def _linear_quantile(counts: np.ndarray, edges: np.ndarray, q: float) -> float | None:
    cum = np.cumsum(counts)
    if cum[-1] <= 0:
        return None
    t = q * cum[-1]
    i = int(min(np.searchsorted(cum, t, side="left"), len(counts) - 1))
    before = cum[i - 1] if i else 0
    frac = (t - before) / counts[i] if counts[i] else 0.0
    return float(edges[i] + frac * (edges[i + 1] - edges[i]))


def summarize(
    stream: NormStream, rule: OutlierRule, key: str, label: str, spec: str
) -> tuple[ModelResult, dict[str, np.ndarray]]:
    """(ModelResult, arrays) per the run directory contract. The output-level statistics are those of block
    ``stream.layer`` (the last unless the run asked for another)."""
    s, edges = stream.sums, stream.edges
    hist = s["hist_counts"]  # (L, E)
    out_layer = stream.layer
    chosen, auto = _rule_for(hist[out_layer], edges, rule.kind, rule.value)
    cut, applied = _cut(chosen.threshold, edges)
    stats = outlier_stats_from_histogram(hist[out_layer], edges, applied, s["hist_sums"][out_layer])
    cls_n = int(s["cls_hist"].sum())
    output = OutputStats(
        **vars(stats),
        cls_norm_mean=float(s["cls_sum"][0] / cls_n) if cls_n else None,
        register_norms_mean=[float(v / stream.images) if stream.images else None for v in s["reg_sum"]],
    )
    layers = _layers(stream, rule)
    pos_hist = s["position_hist"]  # (gh, gw, E)
    position_counts, position_totals = pos_hist[..., cut:].sum(-1), pos_hist.sum(-1)
    nb = s["neighbor_hist"]  # (E, S)
    nb_out, nb_norm = nb[cut:].sum(0), nb[:cut].sum(0)
    n = max(stream.images, 1)
    mean_attention = s["attention_sum"] / n  # (Q, gh, gw)
    reg_sim = s["register_similarity_sum"] / n  # (R, R)
    reg_out_sim = s["register_output_similarity_sum"] / n  # (R, R)
    result = ModelResult(
        key=key,
        label=label,
        spec=spec,
        registers=stream.registers,
        depth=stream.depth,
        grid=list(stream.grid),
        images=stream.images,
        bad_images=[BadImage(path=p, reason=r) for p, r in stream.bad],
        rule=Rule(
            kind=rule.kind,
            value=rule.value,
            threshold=applied,
            bimodal=auto.bimodal,
            statistic=auto.statistic,  # the bimodality test, whichever rule decides
            unsnapped_threshold=chosen.threshold,  # before moving it to the nearest histogram edge
        ),
        output=output,
        layers=layers,
        # first block whose distribution is bimodal with an outlier mode (Fig. 4a)
        first_outlier_layer=next((d.layer for d in layers if d.auto_threshold is not None), None),
        layer=out_layer,
        strongest_layer=strongest_layer(layers),
        strongest_definition=STRONGEST_DEFINITION,
        positions=_positions(position_counts, position_totals),
        neighbors=_neighbors(stream, cut, nb_out, nb_norm),
        masks=_masks(stream, cut),
        # the register count is ``registers`` above; the register maps' analysis lives here
        register_analysis=_register_analysis(stream, mean_attention, reg_sim, reg_out_sim),
        sinks=sink_summary(s["sinks"]),
    )
    result.verdict = verdict(result, rule.kind, rule.value)
    arrays = _arrays(stream, position_counts, position_totals, nb_out, nb_norm, mean_attention, reg_sim, applied)
    return result, arrays


def _layers(stream: NormStream, rule: OutlierRule) -> list[LayerStats]:
    """Every block's patch-token norms under the run's rule, and the auto rule's test, threshold and outliers there
    (Fig. 4a)."""
    s, edges = stream.sums, stream.edges
    hist = s["hist_counts"]  # (L, E)
    layers = []
    for i in range(stream.depth):
        lc, la = _rule_for(hist[i], edges, rule.kind, rule.value)
        _, lapplied = _cut(lc.threshold, edges)
        st = outlier_stats_from_histogram(hist[i], edges, lapplied, s["hist_sums"][i])
        _, aapplied = _cut(la.threshold, edges)
        at = outlier_stats_from_histogram(hist[i], edges, aapplied, s["hist_sums"][i])
        layers.append(
            LayerStats(
                layer=i,
                median=histogram_quantile(hist[i], edges, 0.5),
                p98=histogram_quantile(hist[i], edges, 0.98),
                max=float(stream.layer_max[i]),
                threshold=lapplied,
                bimodal=la.bimodal,
                auto_threshold=la.threshold,
                outlier_ratio=st.outlier_ratio,
                norm_ratio=st.norm_ratio,
                ashman_d=la.statistic.get("ashman_d"),
                delta_bic=la.statistic.get("delta_bic"),
                dip_ratio=la.statistic.get("dip_ratio"),
                auto_outlier_ratio=at.outlier_ratio,
                auto_norm_ratio=at.norm_ratio,
                outlier_norm_share=_norm_share(at),
            )
        )
    return layers


def _norm_share(stats: OutlierStats) -> float:
    """Share of the total patch-token norm held by the outliers (exact: the means come from per-bin sums)."""
    n, k = stats.patch_tokens, stats.outliers
    if not k or not n or stats.mean_norm_outlier is None:
        return 0.0
    held = k * stats.mean_norm_outlier
    rest = (n - k) * (stats.mean_norm_normal or 0.0)
    return float(held / (held + rest))


def strongest_layer(layers: list[LayerStats]) -> int | None:
    """The block where the artifact signature is strongest (:data:`STRONGEST_DEFINITION`), or None."""
    candidates = [d for d in layers if d.auto_threshold is not None and (d.outlier_norm_share or 0) > 0]
    if not candidates:
        return None
    return max(candidates, key=lambda d: (d.outlier_norm_share or 0, -d.layer)).layer


def _neighbors(stream: NormStream, cut: int, nb_out: np.ndarray, nb_norm: np.ndarray) -> Neighbors:
    s = stream.sums
    n_out, n_norm = int(nb_out.sum()), int(nb_norm.sum())
    median_normal = _linear_quantile(nb_norm, stream.sim_edges, 0.5)
    return Neighbors(
        mean_sim_outlier=float(s["neighbor_sum"][cut:].sum() / n_out) if n_out else None,
        mean_sim_normal=float(s["neighbor_sum"][:cut].sum() / n_norm) if n_norm else None,
        median_sim_normal=median_normal,
        share_outliers_redundant=_share_above(nb_out, stream.sim_edges, median_normal)
        if n_out and median_normal is not None
        else None,
        redundant_definition="share of outliers whose input-embedding 4-neighbour cosine similarity is above the "
        "normals' median (0.5 = no preference)",
        outlier_tokens=n_out,
        normal_tokens=n_norm,
    )


def _masks(stream: NormStream, cut: int) -> Masks:
    bgh = stream.sums["background_hist"]  # (E, 2): object, background
    mask_tokens = int(bgh.sum())
    out_bg = bgh[cut:]
    return Masks(
        available=mask_tokens > 0,
        images_with_mask=int(stream.sums["counts"][1]),
        share_outliers_background=float(out_bg[:, 1].sum() / out_bg.sum()) if out_bg.sum() else None,
        share_patches_background=float(bgh[:, 1].sum() / mask_tokens) if mask_tokens else None,
        outliers_on_background=int(out_bg[:, 1].sum()),
        outliers_on_objects=int(out_bg[:, 0].sum()),
        background_definition="a patch is background when more than half of its pixels are background",
    )


def _register_analysis(
    stream: NormStream, mean_attention: np.ndarray, reg_sim: np.ndarray, reg_out_sim: np.ndarray
) -> RegisterAnalysis:
    return RegisterAnalysis(
        count=stream.registers,
        similarity_mean_offdiag=mean_offdiag(reg_sim),
        output_similarity_mean_offdiag=mean_offdiag(reg_out_sim),
        query_names=list(stream.query_names),
        attention_peak={
            name: [int(v) for v in np.unravel_index(int(np.argmax(m)), m.shape)]
            for name, m in zip(stream.query_names, mean_attention, strict=True)
        },
    )


def _positions(counts: np.ndarray, totals: np.ndarray) -> Positions:
    gh, gw = counts.shape
    share = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    border = np.zeros((gh, gw), bool)
    border[0], border[-1], border[:, 0], border[:, -1] = True, True, True, True
    total_out = int(counts.sum())

    def _ratio(sel: np.ndarray) -> float | None:
        t = totals[sel].sum()
        return float(counts[sel].sum() / t) if t else None

    order = np.argsort(-share, axis=None)[:5]
    return Positions(
        outliers=total_out,
        tokens=int(totals.sum()),
        max_share=float(share.max()) if share.size else None,
        mean_share=float(share.mean()) if share.size else None,
        border_outlier_ratio=_ratio(border),
        interior_outlier_ratio=_ratio(~border) if (~border).any() else None,
        top=[(int(i // gw), int(i % gw), float(share.flat[i])) for i in order] if total_out else [],
    )


def _arrays(stream, position_counts, position_totals, nb_out, nb_norm, mean_attention, reg_sim, applied) -> dict:
    s = stream.sums
    ex = stream.examples
    gh, gw = stream.grid
    q = len(stream.query_names)
    out: dict[str, np.ndarray] = {
        "hist_edges": stream.edges,
        "hist_counts": s["hist_counts"],
        "hist_sums": s["hist_sums"],
        "cls_hist": s["cls_hist"],
        "reg_hist": s["reg_hist"],
        "position_counts": position_counts,
        "position_totals": position_totals,
        "neighbor_edges": stream.sim_edges,
        "neighbor_hist_outlier": nb_out,
        "neighbor_hist_normal": nb_norm,
        "mean_attention": mean_attention.astype(np.float32),
        "query_names": np.array(stream.query_names, dtype=str),
        "register_similarity": reg_sim.astype(np.float32),
        "ex_index": np.array([e.index for e in ex], np.int64),
    }
    if ex:
        out["ex_images"] = np.stack([e.image for e in ex])
        out["ex_norm"] = np.stack([e.norm for e in ex])
        out["ex_attention"] = np.stack([e.attention for e in ex])
        out["ex_pca"] = np.stack([e.pca for e in ex])
        out["ex_outlier"] = out["ex_norm"] > applied if applied is not None else np.zeros_like(out["ex_norm"], bool)
        if all(e.mask is not None for e in ex):
            out["ex_mask"] = np.stack([e.mask for e in ex])
    else:
        out["ex_images"] = np.zeros((0, 1, 1, 3), np.uint8)
        out["ex_norm"] = np.zeros((0, gh, gw), np.float32)
        out["ex_attention"] = np.zeros((0, q, gh, gw), np.float32)
        out["ex_pca"] = np.zeros((0, gh, gw), np.float32)
        out["ex_outlier"] = np.zeros((0, gh, gw), bool)
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def verdict(result: ModelResult, rule: str, value: float | None) -> str:
    """One plain sentence: no outliers, background artifacts like the paper's, object evidence, or mixed."""
    out, r, nb, masks = result.output, result.rule, result.neighbors, result.masks
    n_img = result.images
    if n_img == 0:
        return "No usable images: nothing was measured."
    layer, depth = result.layer, int(result.depth)
    which = "output" if layer is None or layer == depth - 1 else f"block {layer}'s"
    if out.outliers == 0:
        if rule == "auto":
            why = r.statistic.get("reason", "the distribution is not bimodal")
            return (
                f"No high-norm outliers on these {n_img} images: the {which} patch-token norms do not split into two "
                f"modes ({why}), so this model shows no artifact tokens here."
            )
        return f"No patch token exceeds the {rule} threshold ({r.threshold}) on these {n_img} images: no outliers."
    head = f"{_pct(out.outlier_ratio)} of patch tokens are high-norm outliers"
    if out.norm_ratio:
        head += f" ({out.norm_ratio:.1f}x the normal norm)"
    caveat = ""
    if rule == "percentile" and value is not None and not r.bimodal:
        caveat = (
            f"; note the {value:g}th-percentile rule always flags {100 - value:.0f}% of tokens and the norm "
            "distribution is not bimodal, so these need not be artifacts"
        )
    score, evidence = 0, []
    red = nb.share_outliers_redundant
    if red is not None:
        evidence.append(f"{_pct(red)} sit on redundant patches (similar to their neighbours; 50% = no preference)")
        score += (red > 0.5 + REDUNDANT_MARGIN) - (red < 0.5 - REDUNDANT_MARGIN)
    if masks.available and masks.share_outliers_background is not None and masks.share_patches_background is not None:
        ob, pb = masks.share_outliers_background, masks.share_patches_background
        evidence.append(f"{_pct(ob)} on background vs {_pct(pb)} of all patches")
        score += (ob > pb + BACKGROUND_MARGIN) - (ob < pb - BACKGROUND_MARGIN)
    detail = " and ".join(evidence)
    if score > 0:
        kind = "they look like the paper's background artifacts"
    elif score < 0:
        kind = "they look like object evidence rather than the paper's background artifacts"
    else:
        kind = "the evidence is mixed between background artifacts and object evidence"
    return f"{head}; {kind}: {detail}{caveat}." if detail else f"{head}; {kind}{caveat}."
