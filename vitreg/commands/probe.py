"""`vitreg probe`: token probes (local / global information of outlier vs normal patch tokens) and linear
classification / dense probes on frozen features."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vitreg.commands._common import (
    add_image_args,
    add_model_args,
    add_runtime_args,
    args_config,
    model_from_args,
    write_json,
    write_report_if_available,
)
from vitreg.device import resolve_device, resolve_dtype, set_threads

PROBES = ("local", "global", "linear", "dense")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="position/pixel/global token probes and linear classification/dense probes")
    add_model_args(p)
    add_image_args(p)
    rule = p.add_argument_group("outlier rule (on last-block patch-token norms, before the final norm)")
    rule.add_argument("--auto", action="store_true", help="data-driven split, none unless bimodal (default)")
    rule.add_argument("--cutoff", type=float, metavar="X", help="outliers: norm > X (paper: 150 for DINOv2)")
    rule.add_argument("--percentile", type=float, metavar="P", help="outliers: above the P-th percentile (study: 98)")
    g = p.add_argument_group("probes")
    g.add_argument("--probes", default=",".join(PROBES), help="comma-separated subset of: " + ", ".join(PROBES))
    g.add_argument(
        "--tokens",
        choices=("prenorm", "normed"),
        default="prenorm",
        help="token features of the local/global probes: last block output before (default) or after the final norm",
    )
    g.add_argument("--seeds", type=int, default=3, help="seeds of the global-information probe (mean ± std)")
    g.add_argument("--test-fraction", type=float, default=0.5, help="share of the images held out for evaluation")
    g.add_argument("--epochs", type=int, default=60, help="training epochs per probe (at least 300 steps)")
    g.add_argument("--no-mlp", action="store_true", help="skip the MLP pixel probe (the linear one always runs)")
    add_runtime_args(p)
    p.add_argument("--out", type=Path, default=Path("runs/probe"), help="run directory (writes OUT/probe.json)")
    p.set_defaults(func=run)


def _rule(args: argparse.Namespace) -> tuple[str, float | None]:
    from vitreg.cli import UserError

    given = [n for n in ("cutoff", "percentile") if getattr(args, n) is not None] + (["auto"] if args.auto else [])
    if len(given) > 1:
        raise UserError(f"choose one outlier rule, got {', '.join('--' + g for g in given)}")
    if args.cutoff is not None:
        if not args.cutoff > 0:
            raise UserError(f"--cutoff needs a positive norm, got {args.cutoff}")
        return "cutoff", args.cutoff
    if args.percentile is not None:
        if not 0 < args.percentile < 100:
            raise UserError(f"--percentile needs a value strictly between 0 and 100, got {args.percentile}")
        return "percentile", args.percentile
    return "auto", None


def run_probes(feats, threshold, probes: list[str], args: argparse.Namespace) -> dict:
    """Every requested probe the data allows; a probe whose annotations are missing is reported as skipped."""
    from vitreg.eval.linear import classification_probe, depth_probe, segmentation_probe
    from vitreg.eval.probes import global_probe, local_probes

    out: dict = {}
    skipped: dict[str, str] = {}
    tf, ep = args.test_fraction, args.epochs
    if "local" in probes:
        out["local"] = local_probes(
            feats, threshold, tokens=args.tokens, test_fraction=tf, seed=args.seed, epochs=ep, mlp=not args.no_mlp
        )
    has_labels = feats.labels is not None
    if "global" in probes:
        if has_labels:
            seeds = tuple(range(args.seed, args.seed + args.seeds))
            out["global"] = global_probe(feats, threshold, tokens=args.tokens, seeds=seeds, test_fraction=tf, epochs=ep)
        else:
            skipped["global"] = "the images have no labels"
    if "linear" in probes:
        if has_labels:
            out["linear"] = classification_probe(feats, test_fraction=tf, seed=args.seed, epochs=ep)
        else:
            skipped["linear"] = "the images have no labels"
    if "dense" in probes:
        dense = {}
        if feats.masks is not None:
            dense["segmentation"] = segmentation_probe(feats, test_fraction=tf, seed=args.seed, epochs=ep)
        else:
            skipped["segmentation"] = "the images have no masks"
        if feats.depth is not None:
            dense["depth"] = depth_probe(feats, test_fraction=tf, seed=args.seed, epochs=ep)
        else:
            skipped["depth"] = "the images have no depth maps"
        if dense:
            out["dense"] = dense
    out["skipped"] = skipped
    return out


def run(args: argparse.Namespace) -> int:
    from vitreg.analysis.norms import find_threshold, outlier_stats
    from vitreg.cli import UserError
    from vitreg.data import ImageTransform, make_loader, open_source
    from vitreg.eval.features import collect_features

    probes = [p.strip() for p in args.probes.split(",") if p.strip()]
    unknown = sorted(set(probes) - set(PROBES))
    if unknown or not probes:
        raise UserError(f"unknown probe {unknown[0] if unknown else '(none)'}; choose from {', '.join(PROBES)}")
    if not 0 < args.test_fraction < 1:
        raise UserError(f"--test-fraction must be in (0, 1), got {args.test_fraction}")
    if args.seeds < 1 or args.epochs < 1:
        raise UserError("--seeds and --epochs must be >= 1")
    rule, value = _rule(args)
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    model = model_from_args(args).to(device)
    dtype = resolve_dtype(args.precision, device)
    try:
        ds = open_source(
            args.images, ImageTransform.from_model(model), limit=args.limit, strict=args.strict, seed=args.seed
        )
        loader = make_loader(ds, args.batch_size, strict=args.strict, num_workers=args.workers)
        feats = collect_features(model, loader, dtype=dtype, device=device)
        if feats.num_images < 4:
            raise ValueError(f"probes need at least 4 usable images, got {feats.num_images}")
        thr = find_threshold(feats.norms, rule, value)
        results = run_probes(feats, thr.threshold, probes, args)
    except ValueError as err:
        raise UserError(str(err)) from None
    summary = dict(
        model=args.model,
        registers=int(model.num_reg_tokens),
        images=args.images,
        num_images=feats.num_images,
        bad_images=[dict(path=p, reason=r) for p, r in feats.bad],
        layer=feats.layer,
        threshold=thr.to_json(),
        outliers=outlier_stats(feats.norms, thr.threshold),
        seed=args.seed,
        config=args_config(args),
        **results,
    )
    out = Path(args.out)
    write_json(out / "probe.json", summary)
    _print(summary)
    print(f"wrote {out / 'probe.json'}")
    write_report_if_available(out)
    return 0


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _print(s: dict) -> None:
    o = s["outliers"]
    t = s["threshold"]["threshold"]
    print(
        f"{s['num_images']} images; outlier threshold {'none' if t is None else f'{t:.2f}'} ({s['threshold']['rule']}):"
        f" {o['outliers']} of {o['patch_tokens']} patch tokens"
    )
    if "local" in s:
        loc = s["local"]
        for g in ("normal", "outlier"):
            pos = loc["position"][g]
            mses = ", ".join(
                f"{name} MSE {'n/a' if v[g]['mse'] is None else format(v[g]['mse'], '.4f')}"
                for name, v in loc["pixel"].items()
            )
            print(f"  local {g:>7} ({pos['count']} tokens): position {_pct(pos['accuracy'])}; {mses}")
    if "global" in s:
        for name, r in s["global"]["results"].items():
            acc = f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}%" if "mean" in r else r.get("note", "n/a")
            print(f"  global {name:>7} ({r['images']} images): {acc}")
    if "linear" in s:
        print("  linear top-1: " + ", ".join(f"{k} {_pct(v)}" for k, v in s["linear"]["top1"].items()))
    for name, r in s.get("dense", {}).items():
        print(f"  {name}: " + (f"mIoU {_pct(r['miou'])}" if name == "segmentation" else f"RMSE {r['rmse']:.4f}"))
    for name, why in s.get("skipped", {}).items():
        print(f"  {name}: skipped ({why})")
