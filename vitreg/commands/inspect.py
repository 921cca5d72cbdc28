"""`vitreg inspect`: run a model over images and print a short summary of its output-token norms per layer."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from vitreg.commands._common import add_image_args, add_model_args, add_runtime_args, model_from_args, write_json
from vitreg.data import ImageTransform, make_loader, open_source
from vitreg.device import resolve_device, resolve_dtype, set_threads
from vitreg.models import Inspector

RESERVOIR = 200_000  # norms kept per layer for quantiles: bounded memory whatever the number of images


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="norm summary of a model's tokens over images, layer by layer")
    add_model_args(p)
    add_image_args(p)
    add_runtime_args(p)
    p.add_argument("--out", type=Path, help="also write the summary to OUT/inspect.json")
    p.set_defaults(func=run)


class _Reservoir:
    """Uniform sample of at most ``size`` values from a stream (Vitter's algorithm R, vectorised per batch)."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size, self.rng, self.seen = size, rng, 0
        self.values = np.empty(0, dtype=np.float32)

    def add(self, x: np.ndarray) -> None:
        x = x.ravel().astype(np.float32)
        room = self.size - len(self.values)
        if room > 0:
            self.values = np.concatenate([self.values, x[:room]])
            self.seen += min(room, len(x))
            x = x[room:]
        if len(x):
            idx = self.rng.integers(0, self.seen + np.arange(1, len(x) + 1))  # slot for each new value
            keep = idx < self.size
            self.values[idx[keep]] = x[keep]
            self.seen += len(x)


def inspect_norms(model, loader, device, dtype, seed: int = 0) -> dict:
    """Per-layer patch-token norm quantiles (pre-final-norm), plus [CLS] and register norms at the last layer."""
    inspector = Inspector(model, dtype=dtype)
    rng = np.random.default_rng(seed)
    depth = len(model.blocks)
    patch = [_Reservoir(RESERVOIR, rng) for _ in range(depth)]
    cls_norms, reg_norms, images, bad = [], [], 0, []
    for batch in loader:
        bad.extend(batch.get("bad", []))
        x = batch.get("image")
        if x is None or (isinstance(x, list) and not x):
            continue
        xs = x if isinstance(x, list) else [x]
        for xb in xs:
            xb = xb.unsqueeze(0) if xb.ndim == 3 else xb
            cap = inspector.run(xb.to(device), layers="all", attention_layers=None, normed=False)
            images += xb.shape[0]
            for i in range(depth):
                s = cap.split_tokens(i)
                patch[i].add(s.patches.norm(dim=-1).numpy())
                if i == depth - 1:
                    if s.cls is not None:
                        cls_norms.append(s.cls.norm(dim=-1).numpy())
                    if s.registers.shape[1]:
                        reg_norms.append(s.registers.norm(dim=-1).numpy())
    if images == 0:
        raise ValueError("no usable images: every image was bad or the source was empty")
    layers = []
    for i, r in enumerate(patch):
        v = r.values
        med = float(np.median(v))
        layers.append(
            dict(
                layer=i,
                median=med,
                p98=float(np.percentile(v, 98)),
                max=float(v.max()),
                share_above_3x_median=float((v > 3 * med).mean()),
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
    summary = inspect_norms(model, loader, device, dtype, seed=args.seed)
    print_summary(args.model, summary)
    if args.out:
        write_json(args.out / "inspect.json", dict(model=args.model, images=args.images, **summary))
        print(f"wrote {args.out / 'inspect.json'}")
    return 0
