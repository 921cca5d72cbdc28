"""`vitreg report DIR`: re-draw the figures and report.html of a run directory from its saved files (no model)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, metavar="DIR", help="a run directory (e.g. written by `vitreg diagnose`)")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--log-x", dest="log_x", action="store_const", const=True, help="show norm histograms on log x")
    scale.add_argument("--linear-x", dest="log_x", action="store_const", const=False, help="show them on linear x")
    p.set_defaults(log_x=None)


def run(args: argparse.Namespace) -> int:
    from vitreg.report.html import write_report

    path = write_report(args.run_dir, log_x=args.log_x)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) and {args.run_dir / 'figures'}/")
    return 0
