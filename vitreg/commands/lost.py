"""`vitreg lost`: LOST object discovery on a model's patch features, scored with CorLoc against ground-truth boxes."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

from vitreg.commands._common import (
    add_model_args,
    add_runtime_args,
    args_config,
    model_from_args,
    write_json,
    write_report_if_available,
)
from vitreg.device import resolve_device, resolve_dtype, set_threads
from vitreg.eval.lost import FEATURE_KINDS, run_lost
from vitreg.eval.voc import AnnotationError, BoxDataset, read_box_dataset


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lost", help="unsupervised object discovery with LOST, scored with CorLoc")
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
    g.add_argument(
        "--resize",
        type=int,
        metavar="S",
        help="resize every image to S x S (the reproducibility study's 224 setting) instead of LOST's protocol: "
        "full resolution cropped to a multiple of the patch size",
    )
    g.add_argument("--batch-size", type=int, default=16, help="images per forward (same-size images are batched)")
    g.add_argument("--workers", type=int, default=0)
    g.add_argument("--strict", action="store_true", help="stop at the first bad image instead of skipping it")
    g = p.add_argument_group("LOST")
    g.add_argument("--layer", type=int, default=-1, help="block whose features are used (default: last)")
    g.add_argument(
        "--features",
        choices=FEATURE_KINDS,
        default="k",
        help="keys/queries/values of all heads concatenated, or the block output tokens (paper: k for DINOv2, "
        "v for DeiT-III and CLIP)",
    )
    g.add_argument("--k", type=int, default=100, help="lowest-degree patches considered for the seed expansion")
    g.add_argument("--bias", default="0", help="bias(es) added to the Gram matrix, comma-separated to sweep: -1,0,1")
    g.add_argument("--normalize", action="store_true", help="L2-normalise the features (cosine similarities)")
    g.add_argument("--examples", type=int, default=6, help="images kept for the report's figure")
    add_runtime_args(p)
    p.add_argument("--out", type=Path, default=Path("runs/lost"), help="run directory (writes OUT/lost.json)")
    p.set_defaults(func=run)


def _parse_biases(text: str) -> list[float]:
    from vitreg.cli import UserError

    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--bias takes comma-separated numbers, got {text!r}") from None
    if not values:
        raise UserError("--bias needs at least one number")
    return values


def build_dataset(args: argparse.Namespace, model) -> tuple[object, str]:
    """The dataset and a description of the protocol used."""
    from vitreg.data.transforms import ImageTransform

    keyword, _, options = str(args.dataset).partition(":")
    if keyword == "synthetic":
        from vitreg.data.synthetic import SceneConfig, SyntheticScenes, parse_scene_options

        t = ImageTransform.from_model(model, mode="resize", img_size=args.resize)
        try:  # scene options (e.g. the training task's) apply first; the size always follows the model
            cfg = parse_scene_options(options, SceneConfig(seed=args.seed))
        except ValueError as err:
            raise AnnotationError(f"--dataset {args.dataset!r}: {err}") from None
        cfg = dataclasses.replace(cfg, img_size=t.input_size)
        return SyntheticScenes(
            args.limit or 64, cfg, transform=t
        ), f"synthetic scenes {t.input_size[0]}x{t.input_size[1]}"
    records = read_box_dataset(args.dataset, args.image_root)
    if args.limit is not None:
        records = records[: args.limit]
    if args.resize:
        t = ImageTransform.from_model(model, mode="resize", img_size=args.resize)
        protocol = f"resized to {args.resize}x{args.resize}"
    else:
        t = ImageTransform.from_model(model, mode="patch_crop")
        protocol = "full resolution, cropped to a multiple of the patch size"
        # Same-size images next to each other so that they share a forward and one (B, N, N) product.
        records = sorted(records, key=lambda r: t.output_size(r.size) if r.size else (0, 0))
    return BoxDataset(records, t), protocol


def run(args: argparse.Namespace) -> int:
    from vitreg.cli import UserError
    from vitreg.data.loader import make_loader

    set_threads(args.threads)
    torch.manual_seed(args.seed)
    biases = _parse_biases(args.bias)
    if args.k < 1:
        raise UserError(f"--k must be >= 1, got {args.k}")
    device = resolve_device(args.device)
    model = model_from_args(args).to(device)
    dtype = resolve_dtype(args.precision, device)
    try:
        ds, protocol = build_dataset(args, model)
    except AnnotationError as err:
        raise UserError(str(err)) from None
    loader = make_loader(ds, args.batch_size, strict=args.strict, num_workers=args.workers)
    try:
        summary = run_lost(
            model,
            loader,
            layer=args.layer,
            kind=args.features,
            k=args.k,
            biases=biases,
            normalize=args.normalize,
            dtype=dtype,
            device=device,
            examples=args.examples,
        )
    except ValueError as err:
        raise UserError(str(err)) from None
    ex = summary.pop("_examples")
    out = Path(args.out)
    summary = dict(
        model=args.model,
        registers=int(model.num_reg_tokens),
        dataset=str(args.dataset),
        protocol=protocol,
        config=args_config(args),
        **summary,
    )
    write_json(out / "lost.json", summary)
    if ex["image"]:
        # One key per example and field (images differ in size): the file loads without pickle.
        arrays = {f"{k}_{i}": np.asarray(v) for k, vs in ex.items() for i, v in enumerate(vs)}
        (out / "figures").mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            out / "figures" / "lost_examples.npz",
            count=np.asarray(len(ex["image"])),
            mean=np.asarray(ds.transform.mean),
            std=np.asarray(ds.transform.std),
            **arrays,
        )
    print(f"LOST on {summary['images']} images ({protocol}), {args.features} of layer {summary['settings']['layer']}:")
    for r in summary["results"]:
        c = "n/a" if r["corloc"] is None else f"{100 * r['corloc']:.1f}%"
        print(f"  bias {r['bias']:g}: CorLoc {c} ({r['correct']}/{r['images']})")
    print(f"wrote {out / 'lost.json'}")
    write_report_if_available(out)
    return 0
