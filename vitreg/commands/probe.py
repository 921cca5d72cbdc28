"""`vitreg probe`: arguments -> :class:`vitreg.jobs.probe.ProbeConfig` -> :func:`vitreg.jobs.probe.probe`."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitreg.commands import _common as common
from vitreg.jobs.probe import PROBES, ProbeConfig
from vitreg.results.probe import ProbeResult


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_model_args(p)
    common.add_image_args(p)
    common.add_rule_args(p)
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
    common.add_runtime_args(p)
    p.add_argument("--out", type=Path, default=Path("runs/probe"), help="run directory (writes OUT/probe.json)")


def config(args: argparse.Namespace) -> ProbeConfig:
    return ProbeConfig(
        model=common.model_spec(args),
        images=common.image_spec(args),
        runtime=common.runtime(args),
        rule=common.rule_of(args),
        probes=[p.strip() for p in args.probes.split(",") if p.strip()],
        tokens=args.tokens,
        seeds=args.seeds,
        test_fraction=args.test_fraction,
        epochs=args.epochs,
        mlp=not args.no_mlp,
        out=str(args.out),
    )


def run(args: argparse.Namespace) -> int:
    from vitreg.jobs.probe import probe

    return common.run_job(probe, config(args), args, print_summary)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def print_summary(s: ProbeResult, out: Path) -> None:
    o, t = s.outliers, s.threshold.threshold
    print(
        f"{s.num_images} images; outlier threshold {'none' if t is None else f'{t:.2f}'} ({s.threshold.rule}):"
        f" {o.outliers} of {o.patch_tokens} patch tokens"
    )
    for note in s.notes:
        print(f"  note: {note}")
    if s.local is not None:
        for g in ("normal", "outlier"):
            pos = s.local.position[g]
            mses = ", ".join(
                f"{name} MSE {'n/a' if v[g].mse is None else format(v[g].mse, '.4f')}"
                for name, v in s.local.pixel.items()
            )
            print(f"  local {g:>7} ({pos.count} tokens): position {_pct(pos.accuracy)}; {mses}")
    if s.global_probe is not None:
        for name, r in s.global_probe.results.items():
            acc = f"{100 * r.mean:.1f} ± {100 * (r.std or 0):.1f}%" if r.mean is not None else (r.note or "n/a")
            print(f"  global {name:>7} ({r.images} images): {acc}")
    if s.linear is not None:
        print("  linear top-1: " + ", ".join(f"{k} {_pct(v)}" for k, v in s.linear.top1.items()))
    if s.dense is not None:
        if s.dense.segmentation is not None:
            print(f"  segmentation: mIoU {_pct(s.dense.segmentation.miou)}")
        if s.dense.depth is not None:
            print(f"  depth: RMSE {s.dense.depth.rmse:.4f}")
    for name, why in s.skipped.items():
        print(f"  {name}: skipped ({why})")
    print(f"wrote {out / ProbeResult.RESULT_FILE}")
