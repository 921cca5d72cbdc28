"""`vitreg lab GRID.yaml`: train a grid of settings with and without registers, diagnose each, tabulate (lab.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitreg.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Trains every point of a grid file for every seed and register count, diagnoses them on held-out generated "
        "scenes and writes OUT/lab.md and OUT/lab.json. Cached and resumable like reproduce."
    )
    p.add_argument("grid", type=Path, help="grid YAML: base, seeds, registers, diagnose_limit, points")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--jobs", type=int, default=1, help="trainings side by side, one thread each (default 1)")
    p.add_argument("--threads", type=int, help="threads per training (default: all, or 1 with --jobs > 1)")
    p.add_argument(
        "--export",
        type=Path,
        metavar="DIR",
        help="also write every trained model as fp16 safetensors with its provenance into DIR/NAME (zoo layout)",
    )


def run(args: argparse.Namespace) -> int:
    from vitreg.lab import load_grid, run_lab

    if args.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
    command = f"vitreg lab {args.grid} --jobs {args.jobs} --out {args.out}"
    run_lab(load_grid(args.grid), args.out, jobs=args.jobs, threads=args.threads, export=args.export, command=command)
    print((args.out / "lab.md").read_text())
    print(f"wrote {args.out / 'lab.md'} and lab.json" + (f"; fp16 models in {args.export}" if args.export else ""))
    return 0
