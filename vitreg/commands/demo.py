"""`vitreg demo`: the main job on the embedded default, i.e. `vitreg reproduce` (what `make demo` runs).

Kept as a short name for newcomers; ``--quick`` is reproduce's tiny setting (about two minutes).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="same as `vitreg reproduce` (the main job on the embedded default)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: reproduce's)")
    p.add_argument("--quick", action="store_true", help="tiny models and few steps")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vitreg.cli import main

    argv = ["reproduce", *(["--quick"] if args.quick else []), *(["--out", str(args.out)] if args.out else [])]
    return main(argv)
