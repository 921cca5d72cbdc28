"""`vitreg demo`: the main job on the embedded default, i.e. `vitreg reproduce` (what `make demo` runs).

Kept as a short name for newcomers; ``--quick`` is reproduce's tiny setting (about two minutes).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vitreg.commands import reproduce


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=None, help="output folder (default: reproduce's)")
    p.add_argument("--quick", action="store_true", help="tiny models and few steps")


def run(args: argparse.Namespace) -> int:
    """reproduce's own arguments with its defaults, then its run."""
    parser = argparse.ArgumentParser()
    reproduce.add_arguments(parser)
    given = parser.parse_args([*(["--quick"] if args.quick else []), *(["--out", str(args.out)] if args.out else [])])
    return reproduce.run(given)
