"""`vitreg inspect`: run a model over images and print a short summary of its output-token norms per layer."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from vitreg.analysis.norms import default_edges, histogram, histogram_quantile
from vitreg.commands._common import add_image_args, add_model_args, add_runtime_args, model_from_args, write_json
from vitreg.data import ImageTransform, make_loader, open_source
from vitreg.device import resolve_device, resolve_dtype, set_threads
from vitreg.models import Inspector


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="norm summary of a model's tokens over images, layer by layer")
    add_model_args(p)
    add_image_args(p)
    add_runtime_args(p)
    p.add_argument("--out", type=Path, help="also write the summary to OUT/inspect.json")
    p.set_defaults(func=run)


def inspect_norms(model, loader, device, dtype) -> dict:
    """Per-layer patch-token norm quantiles (pre-final-norm), plus [CLS] and register norms at the last layer.

    Norms are streamed into the fixed-edge histograms diagnose uses, so memory does not grow with the images."""
    inspector = Inspector(model, dtype=dtype)
    depth = len(model.blocks)
    edges = default_edges()
    counts = np.zeros((depth, len(edges) - 1), np.int64)  # (L, E) patch-token norm histogram per block
    maxima = np.zeros(depth)
    cls_norms, reg_norms, images, bad = [], [], 0, []
    for batch in loader:
        bad.extend(batch.get("bad", []))
        x = batch.get("image")
        if x is None or (isinstance(x, list) and not x):
            continue
        for xb in x if isinstance(x, list) else [x]:
            xb = xb.unsqueeze(0) if xb.ndim == 3 else xb
            cap = inspector.run(xb.to(device), layers="all", attention_layers=None, normed=False)
            images += xb.shape[0]
            for i in range(depth):
                s = cap.split_tokens(i)
                norms = s.patches.norm(dim=-1).numpy()  # (B, H, W)
                counts[i] += histogram(norms, edges)
                maxima[i] = max(maxima[i], float(norms.max()))
                if i == depth - 1:
                    if s.cls is not None:
                        cls_norms.append(s.cls.norm(dim=-1).numpy())
                    if s.registers.shape[1]:
                        reg_norms.append(s.registers.norm(dim=-1).numpy())
    if images == 0:
        raise ValueError("no usable images: every image was bad or the source was empty")
    layers = []
    for i in range(depth):
        med = histogram_quantile(counts[i], edges, 0.5)
        above = counts[i][edges[:-1] >= 3 * med].sum()  # bins wholly above 3x the median
        layers.append(
            dict(
                layer=i,
                median=med,
                p98=histogram_quantile(counts[i], edges, 0.98),
                max=maxima[i],
                share_above_3x_median=float(above / counts[i].sum()),
            )
        )
    return dict(
        images=images,
        bad_images=[dict(path=p, reason=r) for p, r in bad],
        layers=layers,
        cls_norm=float(np.concatenate(cls_norms).mean()) if cls_norms else None,
        register_norms=np.concatenate(reg_norms).mean(0).tolist() if reg_norms else [],
    )


def print_summary(name: str, summary: dict) -> None:
    print(f"model {name}: {summary['images']} images, {len(summary['bad_images'])} skipped as bad")
    print("patch-token norms per block output (before the final norm):")
    print(f"{'layer':>6}{'median':>10}{'p98':>10}{'max':>10}{'>3x median':>12}")
    for r in summary["layers"]:
        print(
            f"{r['layer']:>6}{r['median']:>10.2f}{r['p98']:>10.2f}{r['max']:>10.2f}"
            f"{100 * r['share_above_3x_median']:>11.2f}%"
        )
    if summary["cls_norm"] is not None:
        print(f"[CLS] norm (last layer): {summary['cls_norm']:.2f}")
    if summary["register_norms"]:
        print("register norms (last layer): " + ", ".join(f"{n:.2f}" for n in summary["register_norms"]))


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    model = model_from_args(args).to(device)
    dtype = resolve_dtype(args.precision, device)
    ds = open_source(
        args.images, ImageTransform.from_model(model), limit=args.limit, strict=args.strict, seed=args.seed
    )
    loader = make_loader(ds, args.batch_size, strict=args.strict, num_workers=args.workers)
    summary = inspect_norms(model, loader, device, dtype)
    print_summary(args.model, summary)
    if args.out:
        write_json(args.out / "inspect.json", dict(model=args.model, images=args.images, **summary))
        print(f"wrote {args.out / 'inspect.json'}")
    return 0
