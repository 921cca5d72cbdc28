"""`vitreg lost`: arguments -> :class:`vitreg.jobs.lost.LostConfig` -> :func:`vitreg.jobs.lost.lost`."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitreg.commands._common import (
    add_model_args,
    add_resize_arg,
    add_runtime_args,
    list_arg,
    model_spec,
    run_job,
    runtime,
)
from vitreg.jobs.lost import LOST_BATCH_SIZE, LostConfig
from vitreg.jobs.specs import ImageSpec
from vitreg.results.lost import LostResult


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        default="synthetic",
        metavar="PATH",
        help="a VOC root (Annotations/, JPEGImages/), a COCO instances JSON, or 'synthetic' (generated scenes; "
        "'synthetic:task=count,background=flat' sets scene options)",
    )
    g.add_argument(
        "--image-root", type=Path, help="image folder, when not in the standard place beside the annotations"
    )
    g.add_argument("--limit", type=int, metavar="N", help="use at most N images (synthetic: default 64)")
    add_resize_arg(
        g,
        "keep-aspect",
        "keep-aspect (default: LOST's protocol, the photo at full resolution padded with the mean colour to a "
        "multiple of the patch size), or squash / crop / model (the model's own processor) at the model's input size; "
        "--resize squash --size 224 is the reproducibility study's setting",
        size_flag="--size",
    )
    g.add_argument(
        "--size",
        type=int,
        metavar="S",
        help="squash / crop / model: S x S instead of the model's input size; keep-aspect: the longer side at most S",
    )
    g.add_argument(
        "--batch-size", type=int, default=LOST_BATCH_SIZE, help="images per forward (same-size images are batched)"
    )
    g.add_argument("--workers", type=int, default=0)
    g.add_argument("--strict", action="store_true", help="stop at the first bad image instead of skipping it")
    g = p.add_argument_group("LOST")
    g.add_argument("--layer", type=int, default=-1, help="block whose features are used (default: last)")
    g.add_argument(
        "--features",
        choices=("k", "q", "v", "tokens"),
        default="k",
        help="keys/queries/values of all heads concatenated, or the block output tokens (paper: k for DINOv2, "
        "v for DeiT-III and CLIP)",
    )
    g.add_argument("--k", type=int, default=100, help="lowest-degree patches considered for the seed expansion")
    g.add_argument(
        "--bias",
        type=list_arg(float, "numbers"),
        default=[0.0],
        metavar="B[,B...]",
        help="bias(es) added to the Gram matrix, comma-separated to sweep: --bias -1,0,1",
    )
    g.add_argument("--normalize", action="store_true", help="L2-normalise the features (cosine similarities)")
    g.add_argument("--examples", type=int, default=6, help="images kept for the report's figure")
    add_runtime_args(p)
    p.add_argument("--out", type=Path, default=Path("runs/lost"), help="run directory (writes OUT/lost.json)")


def config(args: argparse.Namespace) -> LostConfig:
    return LostConfig(
        model=model_spec(args),
        runtime=runtime(args),
        images=ImageSpec(
            src=str(args.dataset),
            limit=args.limit,
            batch_size=args.batch_size,
            workers=args.workers,
            strict=args.strict,
        ),
        image_root=str(args.image_root) if args.image_root else None,
        resize=args.resize,
        size=args.size,
        layer=args.layer,
        features=args.features,
        k=args.k,
        biases=args.bias,
        normalize=args.normalize,
        examples=args.examples,
        out=str(args.out),
    )


def run(args: argparse.Namespace) -> int:
    from vitreg.jobs.lost import lost

    return run_job(lost, config(args), args, print_summary)


def print_summary(r: LostResult, out: Path) -> None:
    print(f"LOST on {r.images} images ({r.protocol}), {r.settings.features} of layer {r.settings.layer}:")
    for row in r.results:
        c = "n/a" if row.corloc is None else f"{100 * row.corloc:.1f}%"
        print(f"  bias {row.bias:g}: CorLoc {c} ({row.correct}/{row.images})")
    for note in r.notes:
        print(f"  note: {note}")
    print(f"wrote {out / LostResult.RESULT_FILE}")
