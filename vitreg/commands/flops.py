"""`vitreg flops`: arguments -> :class:`vitreg.jobs.flops.FlopsConfig` -> :func:`vitreg.jobs.flops.flops`."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitreg.commands._common import add_model_args, list_arg, model_spec, run_job
from vitreg.jobs.flops import REGISTER_SWEEP, FlopsConfig
from vitreg.jobs.specs import ModelSpec
from vitreg.results.flops import FlopsResult


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument(
        "--register-counts",
        type=list_arg(int, "integers"),
        default=list(REGISTER_SWEEP),
        metavar="LIST",
        help=f"numbers of registers to count, comma-separated (default: {','.join(map(str, REGISTER_SWEEP))})",
    )
    p.add_argument(
        "--resolutions",
        type=list_arg(int, "integers"),
        metavar="LIST",
        help="input sizes, comma-separated (default: the model's own size)",
    )
    p.add_argument("--out", type=Path, default=Path("runs/flops"), help="run directory (writes OUT/flops.json)")


def config(args: argparse.Namespace) -> FlopsConfig:
    """``--model A,B`` counts several models with the same flags."""
    base = model_spec(args)
    models = [ModelSpec(**{**vars(base), "spec": s.strip()}) for s in args.model.split(",") if s.strip()]
    return FlopsConfig(
        models=models, register_counts=args.register_counts, resolutions=args.resolutions, out=str(args.out)
    )


def run(args: argparse.Namespace) -> int:
    from vitreg.jobs.flops import flops

    return run_job(flops, config(args), args, print_summary)


def print_summary(result: FlopsResult, out: Path) -> None:
    for m in result.models:
        print(f"{m.model}:")
        print(f"{'size':>6}{'regs':>6}{'tokens':>8}{'GFLOPs':>12}{'+FLOPs':>9}{'params (M)':>12}{'+params':>9}")
        for r in m.rows:
            print(
                f"{r.img_size:>6}{r.registers:>6}{r.tokens:>8}{r.flops / 1e9:>12.2f}"
                f"{100 * r.flops_overhead:>8.2f}%{r.params / 1e6:>12.3f}{r.added_params:>9}"
            )
    print(f"wrote {out / FlopsResult.RESULT_FILE}")
