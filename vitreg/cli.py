"""`vitreg <command>`: a thin dispatcher. Each command lives in vitreg/commands/<name>.py and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking the parsed args."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from vitreg import __version__


class UserError(Exception):
    """An error caused by the user's input; printed as one clear line, without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    import vitreg.commands as commands

    parser = argparse.ArgumentParser(
        prog="vitreg",
        description="Find, measure and fix high-norm artifact tokens in Vision Transformers with registers.",
    )
    parser.add_argument("--version", action="version", version=f"vitreg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"vitreg.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from vitreg.config import ConfigError
    from vitreg.data.errors import BadImageError
    from vitreg.models.checkpoints import CheckpointError

    try:
        result = args.func(args)
    except (UserError, ConfigError, CheckpointError, BadImageError, FileNotFoundError, ValueError) as err:
        # Bad input (a flag, a file, a config key) is one clear line; -v shows the traceback for a bug report.
        if args.verbose:
            raise
        print(f"vitreg {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vitreg {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
