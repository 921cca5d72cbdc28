"""Outlier rules on synthetic norm samples: a known bimodal split, unimodal samples with no outliers, exact cutoff and
percentile, and binned statistics that add up like the one-shot ones."""

from __future__ import annotations

import numpy as np
import pytest

from vitreg.analysis.norms import (
    default_edges,
    find_threshold,
    find_threshold_from_histogram,
    histogram,
    outlier_agreement,
    outlier_mask,
    outlier_stats,
    outlier_stats_from_histogram,
)


def _bimodal(rng: np.random.Generator, n: int = 20_000, share: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    high = rng.random(n) < share
    v = np.where(high, rng.lognormal(np.log(100), 0.1, n), rng.lognormal(np.log(10), 0.15, n))
    return v, high


def test_auto_finds_known_bimodal_split():
    v, high = _bimodal(np.random.default_rng(0))
    t = find_threshold(v)
    assert t.bimodal is True
    assert t.threshold is not None
    assert 15 < t.threshold < 70  # between the modes, not inside either
    assert np.array_equal(v > t.threshold, high)  # the split recovers the planted labels exactly
    assert t.statistic["ashman_d"] > 2
    assert t.statistic["dip_ratio"] < 0.1
    s = outlier_stats(v, t.threshold)
    assert s.outliers == high.sum()
    assert s.norm_ratio == pytest.approx(10, rel=0.1)


@pytest.mark.parametrize(
    "name",
    ["normal", "lognormal", "heavy_tailed", "pareto", "uniform", "uniform_log", "exponential", "small_sample"],
)
def test_auto_gives_no_outliers_on_unimodal(name: str):
    rng = np.random.default_rng(1)
    n = 20_000
    v = {
        "normal": lambda: rng.normal(50, 5, n),
        "lognormal": lambda: rng.lognormal(3, 0.8, n),
        "heavy_tailed": lambda: 20 + 3 * np.abs(rng.standard_t(2, n)),
        "pareto": lambda: (rng.pareto(2.5, n) + 1) * 5,
        "uniform": lambda: rng.uniform(1, 100, n),
        "uniform_log": lambda: np.exp(rng.uniform(0, 4, n)),
        "exponential": lambda: rng.exponential(10, n) + 0.5,
        "small_sample": lambda: rng.normal(50, 5, 64),
    }[name]()
    t = find_threshold(v)
    assert t.threshold is None, t.statistic
    assert outlier_stats(v, t.threshold).outliers == 0


def test_cutoff_and_percentile_exact():
    v = np.arange(1, 101, dtype=float)  # 1..100
    t = find_threshold(v, "cutoff", 150)
    assert t.threshold == 150
    assert outlier_stats(v, t.threshold).outliers == 0
    assert outlier_stats(v, find_threshold(v, "cutoff", 90).threshold).outliers == 10
    p = find_threshold(v, "percentile", 98)
    assert p.threshold == pytest.approx(np.percentile(v, 98))
    assert outlier_stats(v, p.threshold).outliers == 2


def test_bad_rule_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="choose one of"):
        find_threshold(np.ones(5), "median")
    with pytest.raises(ValueError, match="cutoff"):
        find_threshold(np.ones(5), "cutoff")
    with pytest.raises(ValueError, match="percentile"):
        find_threshold(np.ones(5), "percentile", 100)


def test_histogram_streaming_equals_one_shot():
    v, _ = _bimodal(np.random.default_rng(2))
    edges = default_edges()
    streamed = sum(histogram(chunk, edges) for chunk in np.array_split(v, 7))
    assert np.array_equal(streamed, histogram(v, edges))
    a = find_threshold_from_histogram(streamed, edges)
    b = find_threshold(v)
    assert a.threshold == pytest.approx(b.threshold)
    sums = np.bincount(np.clip(np.searchsorted(edges, v, "left") - 1, 0, len(edges) - 2), v, len(edges) - 1)
    s = outlier_stats_from_histogram(streamed, edges, a.threshold, sums)
    exact = outlier_stats(v, a.threshold)
    assert s.outliers == exact.outliers
    assert s.mean_norm_outlier == pytest.approx(exact.mean_norm_outlier)
    assert s.median_norm_normal == pytest.approx(exact.median_norm_normal, rel=0.02)


def test_cutoff_inserted_as_edge_is_exact_on_bins():
    rng = np.random.default_rng(3)
    v = rng.lognormal(np.log(150), 0.5, 5000)
    edges = default_edges(extra=150.0)
    s = outlier_stats_from_histogram(histogram(v, edges), edges, 150.0)
    assert s.outliers == int((v > 150).sum())


# ------------------------------------------------------------------------------------------------ two runs' outliers
def test_outlier_mask_is_diagnoses_histogram_procedure():
    """The outlier tokens of a sample are those diagnose counts from its streamed histogram: the same threshold at
    the same edge, the same count."""
    v, high = _bimodal(np.random.default_rng(4))
    mask, applied, found = outlier_mask(v)
    edges = default_edges()
    counts = histogram(v, edges)
    stats = outlier_stats_from_histogram(counts, edges, found.threshold)
    assert applied in edges
    assert found.bimodal
    assert int(mask.sum()) == stats.outliers
    assert (mask == (v > applied)).all()
    assert (mask == high).mean() > 0.999  # and they are the high mode
    none, t, _ = outlier_mask(np.random.default_rng(5).lognormal(2, 0.2, 5000))
    assert t is None
    assert not none.any()
    cut, t, _ = outlier_mask(v, "cutoff", 50.0)
    assert t == 50.0  # a cutoff is an edge: applied exactly
    assert (cut == (v > 50.0)).all()


def test_outlier_agreement_counts_the_two_sets():
    v, _ = _bimodal(np.random.default_rng(6))
    same = outlier_agreement(v, v.copy())
    assert same["jaccard"] == 1.0
    assert same["max_rel_norm_diff"] == 0.0
    assert same["outliers_ref"] == same["outliers_other"] == same["both"] == same["either"] > 0
    other = v.copy()
    out = np.flatnonzero(outlier_mask(v)[0])
    normal = np.flatnonzero(~outlier_mask(v)[0])
    other[out[:3]] = 5.0  # three outliers become normal tokens ...
    other[normal[:2]] = 120.0  # ... and two normal tokens become outliers
    a = outlier_agreement(v, other)
    n = same["outliers_ref"]
    assert a["outliers_ref"] == n
    assert a["outliers_other"] == n - 1
    assert a["both"] == n - 3
    assert a["either"] == n + 2
    assert a["jaccard"] == pytest.approx((n - 3) / (n + 2))
    assert a["max_rel_norm_diff"] == pytest.approx(np.max(np.abs(other - v) / v))
    assert outlier_agreement(other, v)["jaccard"] == a["jaccard"]  # symmetric
    flat = np.random.default_rng(7).lognormal(2, 0.2, 5000)
    assert outlier_agreement(flat, flat * 1.001)["jaccard"] == 1.0  # no outliers in either run: they agree
    with pytest.raises(ValueError, match="same tokens"):
        outlier_agreement(v, v[:-1])


def test_bf16_and_fp32_outliers_compared_as_the_bench_does():
    """bench/diagnose_clip.py's comparison on a small model: every block's patch norms under fp32 and under bf16
    autocast, the same images, then :func:`outlier_agreement` per block. The planted artifact is far above every
    other token, so bf16 must find the same outlier tokens, and its norms stay within bf16's resolution."""
    import torch
    from test_ttr import LAYER, planted_model

    from vitreg.analysis.register_neurons import block_norms
    from vitreg.models import Inspector

    model = planted_model()
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    depth = len(model.blocks)

    def norms(dtype):
        cap = Inspector(model, dtype=dtype).run(x, layers=None, norm_layers="all", attention_layers=None)
        return block_norms(cap, depth).astype(np.float64)  # (images, blocks, patches)

    ref, low = norms(None), norms(torch.bfloat16)
    rows = [outlier_agreement(ref[:, i], low[:, i]) for i in range(depth)]
    assert all(r["outliers_ref"] > 0 for r in rows[LAYER:])  # the planted artifact, from its block on
    assert all(r["jaccard"] == 1.0 for r in rows)
    assert all(0 < r["max_rel_norm_diff"] < 0.05 for r in rows)  # bf16 did run, with its 8-bit mantissa
