"""`vitreg fix`: arguments -> :class:`vitreg.jobs.fix.FixConfig` -> :func:`vitreg.jobs.fix.fix`, then the report."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitreg.commands import _common as common
from vitreg.jobs.fix import FixConfig
from vitreg.jobs.specs import ImageSpec
from vitreg.results.fix import FixResult


def top_k_arg(text: str) -> int | None:
    if text.strip().lower() == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a number of neurons or 'auto', got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Find the MLP units that write the high-norm artifact tokens (register neurons) and move their activations "
        "into extra untrained tokens at inference (test-time registers, Jiang, Dravid et al. 2025). Writes "
        "DIR/neurons.json (for --test-time-registers of diagnose, lost and probe), the diagnosis of the model "
        "before (a) and after (b), DIR/fix.json and the report. Runs in fp32 unless --precision bf16/fp16 asks "
        "for autocast: bf16 changed which tokens are outliers on a released model with artifacts "
        "(bench/diagnose_clip.py)."
    )
    common.add_model_args(p, registers=False)  # --registers is the test-time registers' count here
    common.add_image_args(p)
    p.set_defaults(limit=256)
    common.add_runtime_args(p)
    g = p.add_argument_group("register neurons")
    g.add_argument(
        "--top-k",
        type=top_k_arg,
        default=None,
        metavar="K|auto",
        help="neurons to move (default auto: the smallest k that clears the outliers)",
    )
    g.add_argument(
        "--registers",
        dest="ttr",
        type=int,
        default=1,
        metavar="N",
        help="test-time registers to add (default 1; the model's own come from its spec)",
    )
    g.add_argument(
        "--detect-layer",
        type=int,
        default=-1,
        metavar="L",
        help="block whose outputs mark the outliers (default -1: the last; negative counts from the end); "
        "the diagnosis before and after analyses this block too",
    )
    g.add_argument(
        "--top-layer",
        type=int,
        metavar="L",
        help="score units in blocks 0..L (default: the block where the outliers first appear)",
    )
    common.add_rule_args(p, sigma=True)
    g.add_argument(
        "--sparse", type=float, metavar="S", help="keep only units inactive on at least this share of the other patches"
    )
    g.add_argument("--max-top-k", type=int, default=64, metavar="K", help="largest k of the sweep (default 64)")
    g.add_argument(
        "--clear", type=float, default=0.05, help="cleared: at most this fraction of the outliers left (default 0.05)"
    )
    p.add_argument("--examples", type=int, default=8, metavar="K", help="images kept for the pictures")
    p.add_argument("--save-model", action="store_true", help="also write the fixed model to DIR/model/")
    p.add_argument(
        "--held-out",
        metavar="SRC",
        help="other images (any --images SRC) to measure the chosen fix on: outliers and [CLS] cosine",
    )
    p.add_argument("--held-out-subset", metavar="START:STOP:STEP", help="these of the --held-out images, e.g. 1::2")
    p.add_argument("--no-report", action="store_true", help="write results only (`vitreg report DIR` later)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="run directory to write")


def config(args: argparse.Namespace) -> FixConfig:
    return FixConfig(
        model=common.model_spec(args),
        images=common.image_spec(args),
        runtime=common.runtime(args),
        top_k=args.top_k,
        registers=args.ttr,
        detect_layer=args.detect_layer,
        top_layer=args.top_layer,
        rule=common.rule_of(args),
        sparse=args.sparse,
        max_top_k=args.max_top_k,
        clear=args.clear,
        examples=args.examples,
        save_model=args.save_model,
        held_out=ImageSpec(src=args.held_out, subset=args.held_out_subset, batch_size=args.batch_size)
        if args.held_out
        else None,
        out=str(args.out),
    )


def run(args: argparse.Namespace) -> int:
    from vitreg.jobs.fix import fix

    return common.run_job(fix, config(args), args, print_summary)


def print_summary(result: FixResult, out: Path) -> None:
    print(f"{result.model}: {result.outcome}")
    for note in result.notes:
        print(f"  note: {note}")
    if result.detect_layer is not None:
        print(f"  outliers detected at block {result.detect_layer} (0-based; --detect-layer)")
    sweep = result.sweep
    if sweep is not None:
        ks = ", ".join(f"k={p.k}: {100 * p.outlier_share:.2f}%" for p in sweep.points)
        print(f"  outlier share as top-k grows (threshold {sweep.threshold:.4g}): {ks}")
        if result.flops_overhead is not None:
            print(f"  FLOPs overhead of the test-time register(s): {100 * result.flops_overhead:.2f}%")
        print(f"  use them: --test-time-registers {Path(out) / 'neurons.json'}")
    h = result.held_out
    if h is not None:
        after = f"{100 * h.after.outlier_share:.2f}%" if h.after is not None else "(nothing moved)"
        cos = f"{h.after.cls_cosine:.3f}" if h.after is not None and h.after.cls_cosine is not None else "n/a"
        print(
            f"  held out ({h.images} images of {h.source}): outliers {100 * h.before.outlier_share:.2f}% -> "
            f"{after}, [CLS] cosine {cos}; their diagnosis: {Path(out) / h.directory}"
        )
    if result.saved_model:
        print(f"  fixed model: {result.saved_model}")
    print(f"wrote {Path(out) / 'neurons.json'}, fix.json and the diagnosis (metrics.json)")
