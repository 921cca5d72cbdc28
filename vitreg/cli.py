"""`vitreg <command>`: a thin dispatcher. Each command lives in vitreg/commands/<name>.py with ``add_arguments(p)``
and ``run(args)``; only the module of the command being run is imported, so ``vitreg --help``, ``--version`` and
argument errors answer without importing torch.

A :class:`vitreg.errors.VitregError` (bad input: a flag, a file, a config key) prints as one line naming it, exit
status 2; any other exception is a bug and keeps its traceback (exit status 1). ``-v`` shows the traceback always.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
from collections.abc import Sequence

from vitreg._version import __version__
from vitreg.commands import COMMANDS
from vitreg.errors import VitregError

# A value that starts with "-" and is a number or a comma-separated list of numbers ("--bias -1,0,1") is a value,
# not an option; argparse's own test knows single numbers only.
_NEGATIVE_VALUES = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?(,-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)*$")


def _command_in(argv: Sequence[str]) -> str | None:
    """The command named in ``argv`` (the first word that is not a global flag), if it is one of ours."""
    for word in argv:
        if word.startswith("-"):
            continue
        return word if word in COMMANDS else None
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; the arguments of ``command`` (only) are added, importing its module."""
    parser = argparse.ArgumentParser(
        prog="vitreg",
        description="Find, measure and fix high-norm artifact tokens in Vision Transformers with registers.",
    )
    parser.add_argument("--version", action="version", version=f"vitreg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p._negative_number_matcher = _NEGATIVE_VALUES
        if name == command:
            module = importlib.import_module(f"vitreg.commands.{name}")
            module.add_arguments(p)
            p.set_defaults(func=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_in(argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a usage error argparse has already printed
        return int(stop.code or 0)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except VitregError as err:
        if args.verbose:
            raise
        message = " ".join(str(err).split("\n"))  # one line, whatever the library put in it
        print(f"vitreg {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vitreg {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
