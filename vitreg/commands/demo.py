"""`vitreg demo`: the main job on the embedded default (what `make demo` runs).

Trains the embedded default (a tiny ViT on generated scenes) with 0 and 4 registers, diagnoses both side by side on
held-out scenes of the same kind, and writes one report. Trained models are reused on a second run (delete the
folder to retrain). ``--quick`` only inspects a randomly initialised tiny model (seconds).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vitreg.models import model_config
from vitreg.train import TrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job on the embedded default (tiny models, generated scenes)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="where the models and the report go")
    p.add_argument("--limit", type=int, default=256, help="number of held-out generated scenes to diagnose")
    p.add_argument("--quick", action="store_true", help="only inspect a randomly initialised tiny model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vitreg.cli import main

    if args.quick:
        print("demo --quick: inspecting a randomly initialised vit_nano_patch4_32 on generated scenes")
        return main(["inspect", "--model", "vit_nano_patch4_32", "--random-init", "--images", "synthetic",
                     "--limit", str(args.limit)])  # fmt: skip
    train_dir, diag_dir = args.out / "train", args.out / "diagnose"
    models = [train_dir / f"reg{n}" for n in (0, 4)]
    if all((m / "model.json").is_file() for m in models):
        print(f"demo 1/2: reusing the trained models in {train_dir}")
    else:
        print(f"demo 1/2: training the embedded default with 0 and 4 registers into {train_dir}")
        rc = main(["train", "registers=0,4", "progress=false", "--out", str(train_dir)])
        if rc:
            return rc
    # Diagnose on scenes of the task the models learned, from an index range training never used.
    default = TrainConfig()
    size = model_config(default.model).img_size[0]
    src = f"synthetic:task={default.data.task},img_size={size},seed=1"
    print(f"demo 2/2: diagnosing both models on {args.limit} generated scenes ({src})")
    rc = main(["diagnose", "--model", str(models[0]), "--compare", str(models[1]), "--images", src,
               "--limit", str(args.limit), "--out", str(diag_dir)])  # fmt: skip
    if rc == 0:
        print(f"\nreport: {(diag_dir / 'report.html').resolve()}")
    return rc
