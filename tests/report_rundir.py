"""Build a small diagnose run directory that follows the contract, from seeded numpy samples (no model).

Model "a" (0 registers) has a bimodal output-norm sample: normal tokens near 30 and a known set of outliers near 300
that appear from block 2 on; model "b" (4 registers) is unimodal with no outliers. Every metric written is computed
here from the same samples the histograms are built from.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

EDGES = np.logspace(-2, 5, 513)  # fixed log-spaced edges, as the contract asks
GRID = (8, 8)
IMG = 32
DEPTH = 4
IMAGES = 20


def _model(key: str, registers: int, outliers: bool, rng: np.random.Generator) -> tuple[dict, dict]:
    gh, gw = GRID
    n = IMAGES * gh * gw
    layer_norms = []
    is_out = np.zeros((IMAGES, gh, gw), bool)
    if outliers:  # a fixed corner of every image plus a few random positions
        is_out[:, 0, :2] = True
        is_out.reshape(-1)[rng.choice(n, 10, replace=False)] = True
    for layer in range(DEPTH):
        norms = rng.lognormal(np.log(10 + 7 * layer), 0.25, size=(IMAGES, gh, gw))
        if outliers and layer >= 2:
            norms[is_out] = rng.lognormal(np.log(100 * (layer - 1)), 0.1, size=int(is_out.sum()))
        layer_norms.append(norms)
    out = layer_norms[-1]
    threshold = 100.0 if outliers else None
    flagged = out > threshold if threshold is not None else np.zeros_like(is_out)
    hist_counts = np.stack([np.histogram(x, EDGES)[0] for x in layer_norms])  # (L, E)
    cls = rng.lognormal(np.log(40), 0.1, IMAGES)
    regs = rng.lognormal(np.log(60), 0.1, (registers, IMAGES))
    nb_edges = np.linspace(-1, 1, 41)
    sims = np.clip(rng.normal(0.5, 0.2, out.shape) + 0.4 * flagged, -1, 1)
    q = 1 + registers
    mean_att = rng.random((q, gh, gw))
    mean_att /= mean_att.sum((1, 2), keepdims=True)
    k = 3
    yy, xx = np.mgrid[:IMG, :IMG]
    ex_images = np.stack([np.stack([xx * 8, yy * 8, np.full_like(xx, 60 * i)], -1) for i in range(k)]).astype(np.uint8)
    pca = rng.normal(size=(k, gh, gw))
    reg_att = rng.random((registers, gh * gw))
    unit = reg_att / np.linalg.norm(reg_att, axis=1, keepdims=True)
    arrays = dict(
        hist_edges=EDGES,
        hist_counts=hist_counts,
        cls_hist=np.histogram(cls, EDGES)[0],
        reg_hist=np.stack([np.histogram(r, EDGES)[0] for r in regs]) if registers else np.zeros((0, 512), np.int64),
        position_counts=flagged.sum(0),
        position_totals=np.full(GRID, IMAGES),
        neighbor_edges=nb_edges,
        neighbor_hist_outlier=np.histogram(sims[flagged], nb_edges)[0],
        neighbor_hist_normal=np.histogram(sims[~flagged], nb_edges)[0],
        mean_attention=mean_att,
        query_names=np.array(["cls"] + [f"reg{i}" for i in range(registers)]),
        register_similarity=unit @ unit.T,
        ex_images=ex_images,
        ex_norm=out[:k],
        ex_attention=rng.random((k, q, gh, gw)),
        ex_pca=(pca - pca.mean()) / pca.std(),
        ex_outlier=flagged[:k],
        ex_mask=(xx > 16)[None].repeat(k, 0).astype(np.int64),
    )
    normal, outl = out[~flagged], out[flagged]
    layers = []
    for i, x in enumerate(layer_norms):
        f = x > threshold if threshold is not None and i >= 2 else np.zeros(x.shape, bool)
        layers.append(
            dict(
                layer=i,
                median=float(np.median(x)),
                p98=float(np.percentile(x, 98)),
                max=float(x.max()),
                threshold=threshold if i >= 2 else None,
                bimodal=bool(f.any()),
                outlier_ratio=float(f.mean()),
                norm_ratio=float(x[f].mean() / x[~f].mean()) if f.any() else None,
            )
        )
    result = {
        "key": key,
        "label": "vit_pico_patch4_32",  # one spec for every model, as a 0 vs 4 registers comparison has
        "spec": "vit_pico_patch4_32",
        "registers": registers,
        "depth": DEPTH,
        "grid": list(GRID),
        "images": IMAGES,
        "bad_images": [{"path": "broken.png", "reason": "not an image"}] if outliers else [],
        "rule": {
            "kind": "auto",
            "value": None,
            "threshold": threshold,
            "bimodal": outliers,
            "statistic": {
                "name": "ashman_d",
                "value": 4.2 if outliers else 0.9,
                "delta_bic": 30.0 if outliers else -5.0,
            },
        },
        "output": {
            "patch_tokens": int(out.size),
            "outliers": int(flagged.sum()),
            "outlier_ratio": float(flagged.mean()),
            "mean_norm_normal": float(normal.mean()),
            "mean_norm_outlier": float(outl.mean()) if outl.size else None,
            "median_norm_normal": float(np.median(normal)),
            "median_norm_outlier": float(np.median(outl)) if outl.size else None,
            "norm_ratio": float(outl.mean() / normal.mean()) if outl.size else None,
            "cls_norm_mean": float(cls.mean()),
            "register_norms_mean": regs.mean(1).tolist(),
        },
        "layers": layers,
        "first_outlier_layer": 2 if outliers else None,
        "positions": {"max_share": float(flagged.mean(0).max())},
        "neighbors": {
            "mean_sim_outlier": float(sims[flagged].mean()) if flagged.any() else None,
            "mean_sim_normal": float(sims[~flagged].mean()),
            "share_outliers_redundant": float((sims[flagged] > 0.8).mean()) if flagged.any() else None,
        },
        "masks": {"available": True, "share_outliers_background": 0.5, "share_patches_background": 0.5},
        "register_analysis": {"count": registers, "similarity_mean_offdiag": None},
        "verdict": "high-norm outliers on redundant background patches" if outliers else "no high-norm outliers",
    }
    return result, arrays


def make_run(run_dir: Path, keys: tuple[tuple[str, int, bool], ...] = (("a", 0, True), ("b", 4, False))) -> Path:
    """Write metrics.json and arrays_<key>.npz for models given as (key, registers, has_outliers)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    results = []
    for key, registers, outliers in keys:
        result, arrays = _model(key, registers, outliers, rng)
        np.savez_compressed(run_dir / f"arrays_{key}.npz", **arrays)
        results.append(result)
    first = results[0]
    summary = {
        "model": first["label"],
        "images": first["images"],
        "rule": "auto",
        "threshold": first["rule"]["threshold"],
        "outlier_ratio": first["output"]["outlier_ratio"],
        "norm_ratio": first["output"]["norm_ratio"],
        "bimodal": first["rule"]["bimodal"],
        "first_outlier_layer": first["first_outlier_layer"],
        "verdict": first["verdict"],
    }
    metrics = {
        "command": "diagnose",
        "vitreg_version": "0.1.0",
        "config": {"images": "synthetic", "limit": IMAGES},
        "summary": summary,
        "models": results,
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return run_dir
