"""`vitreg zoo`: check the model zoo's files against their provenance, or add a finished training run to it."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "The model zoo (vitreg/zoo/): `check` verifies every entry's sha256; `add RUN_DIR --name NAME --command CMD` "
        "stores a finished `vitreg train` run as fp16 weights with its provenance (maintainers)."
    )
    p.add_argument("action", choices=("check", "add"))
    p.add_argument("run_dir", nargs="?", type=Path, metavar="RUN_DIR", help="add: the finished training run")
    p.add_argument("--name", help="add: the entry's name (--model zoo:NAME)")
    p.add_argument("--command", dest="train_command", help="add: the exact command that trained the run")
    p.add_argument("--commit", help="add: the commit the run was trained at (default: this checkout's HEAD)")


def run(args: argparse.Namespace) -> int:
    from vitreg.errors import ConfigError
    from vitreg.models import zoo

    if args.action == "check":
        found = zoo.entries()
        for e in found:
            e.verify()
            print(f"zoo:{e.name}: sha256 {e.provenance['sha256'][:16]}... ok")
        print(f"{len(found)} entries, {zoo.zoo_bytes() / 2**20:.2f} MiB in {zoo.ZOO_ROOT}")
        return 0
    if args.run_dir is None or not args.name or not args.train_command:
        raise ConfigError("zoo add needs RUN_DIR, --name NAME and --command 'the command that trained it'")
    from vitreg.train.zoo import add_to_zoo

    entry = add_to_zoo(args.run_dir, args.name, args.train_command, commit=args.commit)
    p = entry.provenance
    print(f"added zoo:{entry.name}: {p['bytes'] / 2**20:.2f} MiB, top-1 {p['top1']} (fp16 {p['top1_fp16']})")
    return 0
