"""`vitreg reproduce`: train the artifact-lab models with and without registers, run every analysis and write one
report laid out like the paper (report.html, report.md, results.json), published figures beside ours.

Stages are cached in OUT: a second run only re-renders; an interrupted training resumes from its checkpoint.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/reproduce, quick: .../quick)")
    p.add_argument("--quick", action="store_true", help="tiny models and few steps: every stage in about 2 minutes")
    p.add_argument("--ablation", action="store_true", help="train 0, 1, 2, 4, 8 and 16 registers (Fig. 8)")
    p.add_argument("--seeds", type=int, default=1, help="training seeds per register count (mean ± std)")
    p.add_argument(
        "--coco",
        default="auto",
        metavar="JSON",
        help="COCO instances JSON for LOST on photos ('auto': coco-mini from $VITREG_COCO_MINI or shared/data/"
        "coco-mini beside the working directory or the source tree; 'none': skip)",
    )
    p.add_argument("--config", help="training config instead of the artifact-lab preset (name or YAML file)")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores available)")
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="models trained side by side, one thread each (default: 2 on a machine with 2+ cores, 1 with --quick)",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="training config overrides, e.g. steps=1000")


def run(args: argparse.Namespace) -> int:
    from vitreg.reproduce import make_plan, reproduce

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
    )
    out = args.out or Path("runs/reproduce") / ("quick" if args.quick else "default")
    t0 = time.perf_counter()
    results = reproduce(plan, out)
    print()
    for c in results.claims:
        print(f"  {c.status:>15}  {c.claim}")
    print(f"\nreproduce finished in {(time.perf_counter() - t0) / 60:.1f} min")
    print(f"report: {(out / 'report.html').resolve()}")
    print(f"        {(out / 'report.md').resolve()}  and results.json")
    return 0
