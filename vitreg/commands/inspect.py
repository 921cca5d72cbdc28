"""`vitreg inspect`: arguments -> :class:`vitreg.jobs.inspect.InspectConfig` -> :func:`vitreg.jobs.inspect.inspect`."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitreg.commands._common import add_image_args, add_model_args, add_runtime_args, image_spec, model_spec, runtime
from vitreg.jobs.inspect import InspectConfig
from vitreg.results.inspect import InspectResult


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_image_args(p)
    add_runtime_args(p)
    p.add_argument("--out", type=Path, help="also write the summary to OUT/inspect.json")


def run(args: argparse.Namespace) -> int:
    from vitreg.jobs.inspect import inspect

    cfg = InspectConfig(
        model=model_spec(args), images=image_spec(args), runtime=runtime(args), out=str(args.out) if args.out else None
    )
    result = inspect(cfg)
    print_summary(result)
    if args.out:
        print(f"wrote {args.out / 'inspect.json'}")
    return 0


def print_summary(s: InspectResult) -> None:
    print(f"model {s.model}: {s.num_images} images, {len(s.bad_images)} skipped as bad")
    print("patch-token norms per block output (before the final norm):")
    print(f"{'layer':>6}{'median':>10}{'p98':>10}{'max':>10}{'>3x median':>12}")
    for r in s.layers:
        share = 100 * r.share_above_3x_median
        print(f"{r.layer:>6}{r.median or 0:>10.2f}{r.p98 or 0:>10.2f}{r.max:>10.2f}{share:>11.2f}%")
    if s.cls_norm is not None:
        print(f"[CLS] norm (last layer): {s.cls_norm:.2f}")
    if s.register_norms:
        print("register norms (last layer): " + ", ".join(f"{n:.2f}" for n in s.register_norms))
