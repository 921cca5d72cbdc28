"""`vitreg demo`: the main job on the embedded default (what `make demo` runs)."""

from __future__ import annotations

import argparse

from vitreg.commands import inspect as inspect_cmd


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job on the embedded default (tiny model, generated scenes)")
    p.add_argument("--limit", type=int, default=64, help="number of generated images")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    argv = ["--model", "vit_nano_patch4_32", "--random-init", "--images", "synthetic", "--limit", str(args.limit)]
    ns = argparse.ArgumentParser()
    sub = ns.add_subparsers()
    inspect_cmd.register(sub)
    inner = ns.parse_args(["inspect", *argv])
    print("demo: inspecting a randomly initialised vit_nano_patch4_32 on generated scenes")
    return inspect_cmd.run(inner)
