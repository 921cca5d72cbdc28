"""`vitreg fix`: arguments -> :class:`vitreg.jobs.fix.FixConfig` -> :func:`vitreg.jobs.fix.fix`, then the report."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitreg.commands import _common as common
from vitreg.errors import ConfigError
from vitreg.jobs.distill import DistillConfig
from vitreg.jobs.fix import FixConfig
from vitreg.jobs.specs import ImageSpec
from vitreg.results.distill import DistillResult
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
        "Fix a model's high-norm artifact tokens. --method ttr (default): find the MLP units that write them "
        "(register neurons) and move their activations into extra untrained tokens at inference (test-time "
        "registers, Jiang, Dravid et al. 2025); writes DIR/neurons.json (for --test-time-registers of diagnose, lost "
        "and probe), the diagnosis of the model before (a) and after (b), DIR/fix.json and the report. --method "
        "distill: train N registers into the model post hoc by self-distillation (as PH-Reg, Chen, Yan et al. "
        "2025), the test-time-register model (or PH-Reg's augmented original) as teacher, with a small set of "
        "weights unlocked; writes the model as a delta to its base (DIR/delta.json + delta.safetensors: "
        "--model DIR loads it everywhere), DIR/distill.json, the held-out diagnosis and the report; --resume DIR "
        "continues an interrupted one. Inference runs in fp32 unless --precision bf16/fp16 asks for autocast "
        "(bf16 changed which tokens are outliers on a released model: bench/diagnose_clip.py); distillation trains "
        "in bf16 where the hardware has it."
    )
    p.add_argument(
        "--method",
        choices=("ttr", "distill"),
        default="ttr",
        help="ttr: test-time registers (default); distill: registers trained into the model",
    )
    common.add_model_args(p, registers=False, required=False)  # --registers is the added registers' count here
    common.add_image_args(p)
    p.set_defaults(batch_size=None)  # ttr: 32 images a batch, at most 256 images; distill: 8 a step, all images
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
        metavar="N",
        help="registers to add (default 1 test-time register; distill: 4; the model's own come from its spec)",
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
    d = p.add_argument_group("distillation (--method distill)")
    d.add_argument(
        "--teacher",
        choices=("ttr", "tta"),
        default="ttr",
        help="ttr: the test-time-register model, one pass per image (default); tta: PH-Reg's original "
        "averaged over shifted and flipped views",
    )
    d.add_argument(
        "--unlock",
        default="registers",
        metavar="SET",
        help="weights trained beside the registers: registers (default: none, the tokens alone), neurons (the "
        "register neurons' input rows), mlp-in (their blocks' whole fc1), phreg (position and patch embeddings and "
        "the last block)",
    )
    d.add_argument("--neurons", metavar="NEURONS", help="a `vitreg fix` neurons.json to use instead of a search")
    d.add_argument("--steps", type=int, default=300, help="optimiser updates (default 300)")
    d.add_argument("--lr", type=float, default=1e-3, help="learning rate of the unlocked weights (default 1e-3)")
    d.add_argument("--register-lr", type=float, default=1e-2, help="learning rate of the registers (default 1e-2)")
    d.add_argument("--views", type=int, default=10, help="tta: views per image (default 10)")
    d.add_argument("--fit-limit", type=int, default=48, help="images the neuron search runs on (default 48)")
    d.add_argument("--eval-every", type=int, default=50, help="held-out measurement every N steps (default 50)")
    d.add_argument("--eval-images", type=int, default=32, help="held-out images measured while training")
    d.add_argument("--checkpoint-every", type=int, default=25, help="checkpoint every N steps (default 25)")
    d.add_argument("--resume", type=Path, metavar="DIR", help="continue the distillation in DIR")
    p.add_argument("--no-report", action="store_true", help="write results only (`vitreg report DIR` later)")
    p.add_argument("--out", type=Path, metavar="DIR", help="run directory to write")


def distill_config(args: argparse.Namespace) -> DistillConfig:
    images = common.image_spec(args)
    images.batch_size = 16  # decoding only: --batch-size is the training batch
    held = None
    if args.held_out:
        held = ImageSpec(src=args.held_out, subset=args.held_out_subset, batch_size=16, resize=args.resize)
    return DistillConfig(
        model=common.model_spec(args),
        images=images,
        held_out=held,
        runtime=common.runtime(args),
        registers=4 if args.ttr is None else args.ttr,
        teacher=args.teacher,
        unlock=args.unlock,
        neurons=args.neurons,
        top_k=args.top_k,
        fit_limit=args.fit_limit,
        clear=args.clear,
        max_top_k=args.max_top_k,
        views=args.views,
        steps=args.steps,
        batch_size=args.batch_size or 8,
        lr=args.lr,
        register_lr=args.register_lr,
        eval_every=args.eval_every,
        eval_images=args.eval_images,
        checkpoint_every=args.checkpoint_every,
        out=str(args.out),
    )


def config(args: argparse.Namespace) -> FixConfig:
    if args.batch_size is None:
        args.batch_size = 32
    if args.limit is None:
        args.limit = 256
    return FixConfig(
        model=common.model_spec(args),
        images=common.image_spec(args),
        runtime=common.runtime(args),
        top_k=args.top_k,
        registers=1 if args.ttr is None else args.ttr,
        detect_layer=args.detect_layer,
        top_layer=args.top_layer,
        rule=common.rule_of(args),
        sparse=args.sparse,
        max_top_k=args.max_top_k,
        clear=args.clear,
        examples=args.examples,
        save_model=args.save_model,
        held_out=ImageSpec(
            src=args.held_out, subset=args.held_out_subset, batch_size=args.batch_size, resize=args.resize
        )
        if args.held_out
        else None,
        out=str(args.out),
    )


def run(args: argparse.Namespace) -> int:
    from vitreg import distributed as dist
    from vitreg.jobs.distill import distill, resume_distill
    from vitreg.jobs.fix import fix

    if args.resume is not None:
        args.out = args.resume
        return common.run_job(resume_distill, args.resume, args, print_distill, dist.is_main)
    if args.model is None or args.out is None:
        raise ConfigError("vitreg fix needs --model SPEC and --out DIR (or --resume DIR)")
    if args.method == "distill":
        return common.run_job(distill, distill_config(args), args, print_distill, dist.is_main)
    return common.run_job(fix, config(args), args, print_summary)


def print_distill(result: DistillResult, out: Path) -> None:
    print(result.outcome)
    for note in result.notes:
        print(f"  note: {note}")
    h = result.held_out
    if h is not None:
        rows = ", ".join(f"{r.layer}: {100 * r.share_before:.1f}->{100 * r.share_after:.2f}%" for r in h.layers)
        print(f"  held-out outliers per block (original -> distilled, above the original's threshold): {rows}")
        t = h.ttr
        if t is not None:
            cos = "n/a" if t.cls_cosine is None else f"{t.cls_cosine:.3f}"
            print(
                f"  one test-time register ({h.ttr_neurons} neurons), same images: outliers "
                f"{100 * t.outlier_share:.2f}% at the last block, worst block {100 * t.worst_share:.2f}%, "
                f"[CLS] cosine {cos}"
            )
    if result.cost is not None:
        c = result.cost
        print(
            f"  cost: teacher {c.teacher_seconds / 60:.1f} min ({c.teacher_forwards} forwards), training "
            f"{c.train_seconds / 60:.1f} min ({c.images_per_s:.1f} images/s, {c.dtype} on {c.device})"
        )
    print(f"  the model: --model {out} (a delta of {result.delta_bytes / 1e6:.2f} MB to {result.base})")
    print(f"wrote {out / 'delta.json'}, delta.safetensors, distill.json and the held-out diagnosis")


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
