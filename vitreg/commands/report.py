"""`vitreg report DIR`: re-draw the figures and report.html of a run directory from its saved files (no model)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitreg.cli import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="re-render DIR/figures and DIR/report.html from a run directory's saved results")
    p.add_argument("run_dir", type=Path, metavar="DIR", help="a run directory (e.g. written by `vitreg diagnose`)")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--log-x", dest="log_x", action="store_const", const=True, help="show norm histograms on log x")
    scale.add_argument("--linear-x", dest="log_x", action="store_const", const=False, help="show them on linear x")
    p.set_defaults(func=run, log_x=None)


def run(args: argparse.Namespace) -> int:
    from vitreg.report.html import write_report
    from vitreg.report.rundir import RunDirError

    try:
        path = write_report(args.run_dir, log_x=args.log_x)
    except RunDirError as err:
        raise UserError(str(err)) from err
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) and {args.run_dir / 'figures'}/")
    return 0
