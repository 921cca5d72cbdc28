"""Outlier rules for token norms: a fixed cutoff, a percentile, or a data-driven split that first asks whether the
norm distribution is bimodal at all.

The paper (Darcet et al.) separates artifact tokens with a fixed cutoff (norm > 150 for DINOv2); the small-ViT
reproducibility study uses the 98th percentile, which by construction always flags 2% of the tokens, artifacts or not.
The ``auto`` rule does neither: it fits one and two Gaussians to the *log*-norms (EM on a histogram, so it works on
streamed statistics) and only calls the high mode "outliers" when

1. two components explain the data better than one (BIC),
2. the modes are well separated (Ashman's D > 2),
3. the histogram really dips between them (a mixture also "fits" a flat or skewed distribution; a dip does not lie),
4. the high mode is a minority with at least a handful of tokens.

Otherwise the threshold is ``None``: no outliers. A token is an outlier when its norm is strictly above the threshold.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vitreg.analysis.outlier_rule import NORM_RULES, check_rule
from vitreg.results.diagnose import OutlierStats

# Fixed, data-independent histogram edges: every batch, rank and run uses the same bins, so histograms add.
# 1024 log-spaced bins over 1e-2..1e5 give a 1.6% norm resolution.
EDGE_MIN, EDGE_MAX, NUM_BINS = 1e-2, 1e5, 1024

# auto-rule criteria (see the module docstring)
MIN_ASHMAN_D = 2.0
MAX_DIP_RATIO = 0.5  # smoothed histogram density at the valley / the lower of the two peaks
MIN_HIGH_WEIGHT = 1e-4
MAX_HIGH_WEIGHT = 0.5
MIN_HIGH_COUNT = 5.0


def default_edges(extra: float | None = None) -> np.ndarray:
    """The fixed log-spaced histogram edges (NUM_BINS + 1,), float64; ``extra`` (e.g. a cutoff) is inserted as an
    edge so that a fixed cutoff is applied exactly on binned statistics."""
    edges = np.geomspace(EDGE_MIN, EDGE_MAX, NUM_BINS + 1)
    if extra is not None and EDGE_MIN < extra < EDGE_MAX:
        i = int(np.argmin(np.abs(edges - extra)))
        edges[i] = extra  # move the nearest edge: bins stay monotone and the count stays fixed
    return edges


def histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts (E,) int64 of ``values`` in ``edges``; values outside the range go to the first / last bin so no token
    is lost (their exact value only matters for the extreme bins)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    idx = np.searchsorted(edges, v, side="left") - 1  # bin i holds (edges[i], edges[i+1]]
    idx = np.clip(idx, 0, len(edges) - 2)
    return np.bincount(idx, minlength=len(edges) - 1).astype(np.int64)


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of every value, same convention as ``histogram`` (clipped to the range)."""
    idx = np.searchsorted(edges, np.asarray(values, dtype=np.float64), side="left") - 1
    return np.clip(idx, 0, len(edges) - 2)


@dataclass
class Threshold:
    threshold: float | None  # None = no outliers; a token is an outlier when norm > threshold
    rule: str  # "auto" | "cutoff" | "percentile"
    value: float | None  # the rule's parameter (cutoff norm, percentile); None for auto
    bimodal: bool | None  # None when the rule did not test it
    statistic: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.rule  # the run directory contract names the rule "kind"
        return d


def find_threshold(norms: np.ndarray, rule: str = "auto", value: float | None = None) -> Threshold:
    """Outlier threshold for a sample of norms (any shape). ``cutoff`` and ``percentile`` are exact on the sample;
    ``auto`` runs on a histogram of the sample (the same code path as streamed statistics)."""
    param = check_rule(rule, value, NORM_RULES)
    v = np.asarray(norms, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if rule == "cutoff":
        return Threshold(param, rule, param, None, {"name": "cutoff", "value": param})
    if v.size == 0:
        return Threshold(None, rule, value, None, {"name": "empty", "value": None, "reason": "no tokens"})
    if rule == "percentile":
        t = float(np.percentile(v, param))
        return Threshold(t, rule, param, None, {"name": "percentile", "value": param})
    pos = v[v > 0]
    lo, hi = (pos.min(), pos.max()) if pos.size else (EDGE_MIN, EDGE_MAX)
    if lo >= EDGE_MIN and hi < EDGE_MAX:
        edges = default_edges()
    else:  # outside the fixed range: bins of the same log width over the sample's own range
        lo, hi = max(lo, 1e-12), max(hi, lo * 1.001)
        edges = np.geomspace(lo / 1.01, hi * 1.01, NUM_BINS + 1)
    return find_threshold_from_histogram(histogram(v, edges), edges, rule, value)


def find_threshold_from_histogram(
    counts: np.ndarray, edges: np.ndarray, rule: str = "auto", value: float | None = None
) -> Threshold:
    """Outlier threshold from a norm histogram ``counts`` (E,) over positive, increasing ``edges`` (E+1,)."""
    param = check_rule(rule, value, NORM_RULES)
    counts = np.asarray(counts, dtype=np.float64).ravel()
    edges = np.asarray(edges, dtype=np.float64).ravel()
    if edges.shape[0] != counts.shape[0] + 1:
        raise ValueError(f"edges must have one more entry than counts, got {edges.shape[0]} and {counts.shape[0]}")
    if rule == "cutoff":
        return Threshold(param, rule, param, None, {"name": "cutoff", "value": param})
    n = counts.sum()
    if n <= 0:
        return Threshold(None, rule, value, None, {"name": "empty", "value": None, "reason": "no tokens"})
    if rule == "percentile":
        q = histogram_quantile(counts, edges, param / 100.0)
        return Threshold(q, rule, param, None, {"name": "percentile", "value": param})
    return _auto(counts, edges)


def histogram_quantile(counts: np.ndarray, edges: np.ndarray, q: float) -> float:
    """Quantile ``q`` in [0, 1] of histogrammed data, interpolated log-linearly inside the bin."""
    counts = np.asarray(counts, dtype=np.float64)
    cum = np.cumsum(counts)
    n = cum[-1]
    if n <= 0:
        return float("nan")
    target = q * n
    i = int(np.searchsorted(cum, target, side="left"))
    i = min(i, len(counts) - 1)
    before = cum[i - 1] if i > 0 else 0.0
    frac = 0.0 if counts[i] == 0 else (target - before) / counts[i]
    lo, hi = edges[i], edges[i + 1]
    if lo > 0:
        return float(math.exp(math.log(lo) + frac * (math.log(hi) - math.log(lo))))
    return float(lo + frac * (hi - lo))


def _normal_pdf(x: np.ndarray, mu: float, sd: float) -> np.ndarray:
    return np.exp(-0.5 * ((x - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))


def _em2(x: np.ndarray, w: np.ndarray, split: float, var_floor: float, iters: int = 200):
    """Weighted EM for a two-Gaussian mixture on bin centres ``x`` with counts ``w``, started by splitting at
    ``split``. Returns (weights (2,), means (2,), sds (2,), log-likelihood) or None when a side is empty."""
    n = w.sum()
    lo, hi = x <= split, x > split
    if w[lo].sum() <= 0 or w[hi].sum() <= 0:
        return None
    pi = np.array([w[lo].sum(), w[hi].sum()]) / n
    mu = np.array([np.average(x[lo], weights=w[lo]), np.average(x[hi], weights=w[hi])])
    var = np.array(
        [
            max(np.average((x[lo] - mu[0]) ** 2, weights=w[lo]), var_floor),
            max(np.average((x[hi] - mu[1]) ** 2, weights=w[hi]), var_floor),
        ]
    )
    ll_old = -np.inf
    for _ in range(iters):
        dens = np.stack([pi[k] * _normal_pdf(x, mu[k], math.sqrt(var[k])) for k in range(2)])  # (2, E)
        tot = np.maximum(dens.sum(0), 1e-300)
        ll = float((w * np.log(tot)).sum())
        r = dens / tot  # responsibilities (2, E)
        nk = (r * w).sum(1)
        if np.any(nk <= 1e-9):
            return None
        pi = nk / n
        mu = (r * w * x).sum(1) / nk
        var = np.maximum((r * w * (x - mu[:, None]) ** 2).sum(1) / nk, var_floor)
        if ll - ll_old < 1e-9 * abs(ll):
            break
        ll_old = ll
    dens = np.stack([pi[k] * _normal_pdf(x, mu[k], math.sqrt(var[k])) for k in range(2)])
    ll = float((w * np.log(np.maximum(dens.sum(0), 1e-300))).sum())
    order = np.argsort(mu)
    return pi[order], mu[order], np.sqrt(var[order]), ll


def _auto(counts: np.ndarray, edges: np.ndarray) -> Threshold:
    """The bimodality test and split on log-norms (see the module docstring)."""
    keep = edges[:-1] > 0
    if not keep.all():  # a zero-norm bin has no log; it can only belong to the low mode
        counts, edges = counts[keep[: len(counts)]], edges[np.r_[keep, True]]
    logs = np.log(edges)
    x = 0.5 * (logs[:-1] + logs[1:])  # bin centres in log space (E,)
    width = float(np.median(np.diff(logs)))
    nz = np.nonzero(counts)[0]
    n = float(counts.sum())
    stat: dict[str, Any] = {"name": "Ashman's D (2-Gaussian fit on log-norms)", "value": None, "tokens": int(n)}
    if nz.size < 3 or n < 20:
        stat["reason"] = "too few distinct values to test bimodality"
        return Threshold(None, "auto", None, False, stat)
    xs, ws = x[nz[0] : nz[-1] + 1], counts[nz[0] : nz[-1] + 1]
    var_floor = width**2  # a component cannot be narrower than a bin
    # one Gaussian (binned data: Sheppard's correction keeps the variance honest)
    mu1 = float(np.average(xs, weights=ws))
    var1 = max(float(np.average((xs - mu1) ** 2, weights=ws)), var_floor)
    ll1 = float((ws * np.log(np.maximum(_normal_pdf(xs, mu1, math.sqrt(var1)) * width, 1e-300))).sum())
    # two Gaussians, several starts (a 3% high mode needs a start near the top)
    cum = np.cumsum(ws) / n
    best = None
    for q in (0.5, 0.8, 0.9, 0.95, 0.98, 0.995):
        split = xs[min(int(np.searchsorted(cum, q)), len(xs) - 2)]
        fit = _em2(xs, ws, split, var_floor)
        if fit is not None and (best is None or fit[3] > best[3]):
            best = fit
    if best is None:
        stat["reason"] = "a two-mode fit did not converge"
        return Threshold(None, "auto", None, False, stat)
    pi, mu, sd, ll2 = best
    ll2 += n * math.log(width)  # same density-to-probability conversion as ll1
    delta_bic = (-2 * ll1 + 2 * math.log(n)) - (-2 * ll2 + 5 * math.log(n))  # > 0 favours two modes
    ashman_d = float(math.sqrt(2) * abs(mu[1] - mu[0]) / math.sqrt(sd[0] ** 2 + sd[1] ** 2))
    # where the posterior flips between the modes (first crossing above the low mean)
    grid = np.linspace(mu[0], mu[1], 2001)
    diff = pi[1] * _normal_pdf(grid, mu[1], sd[1]) - pi[0] * _normal_pdf(grid, mu[0], sd[0])
    flip = np.nonzero(diff > 0)[0]
    t_log = float(grid[flip[0]]) if flip.size else float(mu[1])
    dip = _dip_ratio(xs, ws, mu, sd, width)
    high_count = float(ws[xs > t_log].sum())
    stat.update(
        value=ashman_d,
        ashman_d=ashman_d,
        delta_bic=float(delta_bic),
        dip_ratio=dip,
        weights=[float(p) for p in pi],
        means_log=[float(m) for m in mu],
        sds_log=[float(s) for s in sd],
        mode_norms=[float(math.exp(m)) for m in mu],
        split_norm=float(math.exp(t_log)),
        high_tokens=round(high_count),
    )
    reasons = []
    if delta_bic <= 0:
        reasons.append(f"one mode fits as well as two (delta BIC {delta_bic:.1f})")
    if ashman_d <= MIN_ASHMAN_D:
        reasons.append(f"modes not separated (Ashman's D {ashman_d:.2f} <= {MIN_ASHMAN_D})")
    if dip > MAX_DIP_RATIO:
        reasons.append(f"no dip between the modes (valley/peak {dip:.2f} > {MAX_DIP_RATIO})")
    bimodal = not reasons
    if bimodal and not (MIN_HIGH_WEIGHT <= pi[1] <= MAX_HIGH_WEIGHT and high_count >= MIN_HIGH_COUNT):
        reasons.append(f"the high mode holds {100 * pi[1]:.3g}% of the tokens: not a minority of outliers")
    stat["reason"] = "; ".join(reasons) if reasons else "bimodal: two separated modes with a dip between them"
    if reasons:
        return Threshold(None, "auto", None, bimodal, stat)
    return Threshold(float(math.exp(t_log)), "auto", None, True, stat)


def _dip_ratio(x: np.ndarray, w: np.ndarray, mu: np.ndarray, sd: np.ndarray, width: float) -> float:
    """Smoothed histogram density at its lowest point between the two means, over the lower of the peaks on either
    side. ~0 for a real gap, 1 for a flat or monotone stretch (where a mixture fit alone would see two modes)."""
    h = max(2 * width, 0.5 * float(min(sd)))  # kernel width: several bins, narrower than either mode
    half = math.ceil(3 * h / width)
    k = np.exp(-0.5 * (np.arange(-half, half + 1) * width / h) ** 2)
    pad = np.concatenate([np.zeros(half), w, np.zeros(half)])
    s = np.convolve(pad, k / k.sum(), mode="same")[half : half + len(w)]  # (E,)
    between = np.nonzero((x >= mu[0]) & (x <= mu[1]))[0]
    if between.size == 0:
        return 1.0
    v = between[np.argmin(s[between])]
    peak_lo, peak_hi = s[: v + 1].max(), s[v:].max()
    low_peak = min(peak_lo, peak_hi)
    return float(s[v] / low_peak) if low_peak > 0 else 1.0


def outlier_stats(norms: np.ndarray, threshold: float | None) -> OutlierStats:
    """Counts and norm summaries of outliers (norm > threshold) vs normals for a sample of patch-token norms."""
    v = np.asarray(norms, dtype=np.float64).ravel()
    out_mask = v > threshold if threshold is not None else np.zeros(v.shape, dtype=bool)
    outl, norm = v[out_mask], v[~out_mask]

    def _m(a: np.ndarray, f) -> float | None:
        return float(f(a)) if a.size else None

    mean_o, mean_n = _m(outl, np.mean), _m(norm, np.mean)
    return OutlierStats(
        patch_tokens=int(v.size),
        outliers=int(outl.size),
        outlier_ratio=float(outl.size / v.size) if v.size else 0.0,
        mean_norm_outlier=mean_o,
        mean_norm_normal=mean_n,
        median_norm_outlier=_m(outl, np.median),
        median_norm_normal=_m(norm, np.median),
        norm_ratio=mean_o / mean_n if mean_o is not None and mean_n else None,
    )


def outlier_stats_from_histogram(
    counts: np.ndarray, edges: np.ndarray, threshold: float | None, sums: np.ndarray | None = None
) -> OutlierStats:
    """``outlier_stats`` from binned norms. The threshold is applied at the nearest bin edge (``snap_threshold``);
    ``sums`` (E,), the exact sum of norms in each bin, makes the means exact (else geometric bin centres)."""
    counts = np.asarray(counts, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    if sums is None:
        sums = counts * np.sqrt(np.maximum(edges[:-1], 0) * edges[1:])
    cut = len(counts) if threshold is None else snap_threshold(threshold, edges)[0]
    cn, co = counts[:cut], counts[cut:]
    n_n, n_o = float(cn.sum()), float(co.sum())
    mean_n = float(sums[:cut].sum() / n_n) if n_n else None
    mean_o = float(sums[cut:].sum() / n_o) if n_o else None

    def _median(lo: int, hi: int) -> float | None:
        c = np.zeros_like(counts)
        c[lo:hi] = counts[lo:hi]
        return histogram_quantile(c, edges, 0.5) if c.sum() else None

    total = n_n + n_o
    return OutlierStats(
        patch_tokens=round(total),
        outliers=round(n_o),
        outlier_ratio=n_o / total if total else 0.0,
        mean_norm_outlier=mean_o,
        mean_norm_normal=mean_n,
        median_norm_outlier=_median(cut, len(counts)),
        median_norm_normal=_median(0, cut),
        norm_ratio=mean_o / mean_n if mean_o is not None and mean_n else None,
    )


def snap_threshold(threshold: float, edges: np.ndarray) -> tuple[int, float]:
    """(bin index, edge value) of the edge nearest to ``threshold`` in log space: binned statistics count bins
    ``>= index`` as outliers, i.e. norms above that edge (exact when the threshold is an edge, as for a cutoff
    inserted with ``default_edges(extra=cutoff)``)."""
    edges = np.asarray(edges, dtype=np.float64)
    pos = np.maximum(edges, 1e-300)
    i = int(np.argmin(np.abs(np.log(pos) - math.log(max(threshold, 1e-300)))))
    i = min(max(i, 0), len(edges) - 1)
    return i, float(edges[i])


def outlier_mask(
    norms: np.ndarray, rule: str = "auto", value: float | None = None
) -> tuple[np.ndarray, float | None, Threshold]:
    """The outlier tokens of a sample of ``norms`` (any shape) found the way diagnose finds them on streamed
    statistics: a histogram over the fixed edges (a cutoff inserted as an edge), the rule on that histogram, and the
    threshold applied at the nearest edge. Returns (bool mask shaped like ``norms``, applied threshold or None, the
    rule's :class:`Threshold` before snapping)."""
    v = np.asarray(norms, dtype=np.float64)
    edges = default_edges(extra=float(value) if rule == "cutoff" and value is not None else None)
    idx = bin_index(v, edges)
    counts = np.bincount(idx.ravel(), minlength=len(edges) - 1)
    found = find_threshold_from_histogram(counts, edges, rule, value)
    if found.threshold is None:
        return np.zeros(v.shape, bool), None, found
    cut, applied = snap_threshold(found.threshold, edges)
    cut = min(cut, len(edges) - 1)  # bins >= cut are outliers (diagnose's summary does the same)
    return idx >= cut, applied, found


def outlier_agreement(
    reference: np.ndarray, other: np.ndarray, rule: str = "auto", value: float | None = None
) -> dict[str, Any]:
    """How far two runs of the same tokens (e.g. fp32 vs bf16 autocast) agree on which tokens are outliers.

    ``reference`` and ``other``: norms of the same tokens in the same order (any equal shapes). Each gets its own
    threshold by the same procedure (:func:`outlier_mask`), as each precision would in a diagnose run. Returns the two
    thresholds and outlier counts, the tokens in both sets and in either, the Jaccard index |both| / |either| (1.0
    when neither run finds an outlier: the sets agree), and the largest and mean relative norm difference
    |other - reference| / reference over all tokens."""
    ref, oth = np.asarray(reference, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if ref.shape != oth.shape:
        raise ValueError(f"the two runs must cover the same tokens, got shapes {ref.shape} and {oth.shape}")
    m_ref, t_ref, f_ref = outlier_mask(ref, rule, value)
    m_oth, t_oth, f_oth = outlier_mask(oth, rule, value)
    both, either = int((m_ref & m_oth).sum()), int((m_ref | m_oth).sum())
    rel = np.abs(oth - ref) / np.maximum(np.abs(ref), 1e-12)
    return {
        "rule": rule,
        "value": value,
        "tokens": int(ref.size),
        "threshold_ref": t_ref,
        "threshold_other": t_oth,
        "bimodal_ref": f_ref.bimodal,
        "bimodal_other": f_oth.bimodal,
        "outliers_ref": int(m_ref.sum()),
        "outliers_other": int(m_oth.sum()),
        "both": both,
        "either": either,
        "jaccard": both / either if either else 1.0,
        "max_rel_norm_diff": float(rel.max()) if rel.size else 0.0,
        "mean_rel_norm_diff": float(rel.mean()) if rel.size else 0.0,
    }
