"""The layering of the package, held whole: every module sits on one floor, and imports only from its own floor or
below, wherever the import sits (top of the module, inside a function, under TYPE_CHECKING, a lazy-export table:
see :mod:`import_graph`); within a floor there is no cycle. A failure names the import (file:line).

``python tests/import_graph.py`` prints the floors, the arrows that point up and the cycles.
"""

from __future__ import annotations

import pytest
from import_graph import Arrow, arrows, cycles, modules

#: Floors from the bottom up: (name, members). A member ``pkg.*`` is a package and every module in it; any other
#: member is one module. Data flows up: a model (its architecture, preprocessing and Inspector) -> its loading (formats,
#: the Hub, the zoo) -> its export -> images (data) -> analyses and evaluations -> jobs -> report; the pipelines
#: (stages, lab, reproduce) run jobs and trainings; commands turn flags into job configs; the CLI and the package's own
#: lazy exports (``vitreg.load_model``, ...) sit on top.
FLOORS: list[tuple[str, list[str]]] = [
    ("base", ["vitreg._lazy", "vitreg._version", "vitreg.errors"]),  # import nothing of vitreg but each other
    ("io", ["vitreg.atomic", "vitreg.device", "vitreg.distributed", "vitreg.runlock", "vitreg.stamp"]),
    ("typed", ["vitreg.typed", "vitreg.config"]),  # the one typed decoder, and configs read through it
    ("results", ["vitreg.results.*"]),  # the run-directory contract: plain dataclasses, no torch
    # a model: its architecture and preprocessing, registers, test-time registers, the Inspector
    ("models", [f"vitreg.models.{m}" for m in ("inspect", "planted", "presets", "processor", "registers", "ttr")]),
    ("loading", ["vitreg.models.load.*"]),  # where weights come from: formats, the Hub, the zoo, deltas
    ("export", ["vitreg.models", *(f"vitreg.models.export_{m}" for m in ("like", "onnx", "timm"))]),  # + the facade
    ("data", ["vitreg.data.*"]),
    ("analysis", ["vitreg.analysis.*"]),
    ("eval", ["vitreg.eval.*", "vitreg.flops"]),
    ("train", ["vitreg.train.*", "vitreg.distill.*"]),  # training runs: from scratch, or distilled into a model
    ("jobs", ["vitreg.jobs.*"]),  # one library call per command: typed config -> typed result
    ("report", ["vitreg.report.*"]),  # drawn from run directories only
    ("stages", ["vitreg.stages"]),  # cached stages of a pipeline: jobs, trainings, reports
    ("pipelines", ["vitreg.lab.*", "vitreg.reproduce.*"]),
    ("commands", ["vitreg.commands.*"]),
    ("entry", ["vitreg", "vitreg.cli", "vitreg.__main__"]),  # `vitreg` is the package's facade of lazy exports
]

LEVEL = {name: i for i, (name, _) in enumerate(FLOORS)}


def _floors_of(module: str) -> list[str]:
    return [
        name
        for name, members in FLOORS
        for m in members
        if module == m.removesuffix(".*") or (m.endswith(".*") and module.startswith(m[:-1]))
    ]


def floor_of(module: str) -> str:
    (floor,) = _floors_of(module)
    return floor


def arrows_up(edges: list[Arrow]) -> list[Arrow]:
    return [a for a in edges if LEVEL[floor_of(a.target)] > LEVEL[floor_of(a.source)]]


def test_every_module_is_on_exactly_one_floor():
    wrong = {m: _floors_of(m) for m in modules() if len(_floors_of(m)) != 1}
    assert not wrong, f"modules on no floor or on several (add each to one floor of FLOORS): {wrong}"
    unused = [m for _, members in FLOORS for m in members if not any(m.removesuffix(".*") == x for x in modules())]
    assert not unused, f"FLOORS names modules that do not exist: {unused}"


def test_no_import_points_up():
    up = [
        f"{a.where()}: {a.source} (floor {floor_of(a.source)}) imports {a.target} (floor {floor_of(a.target)})"
        f" [{a.kind}]"
        for a in arrows_up(arrows())
    ]
    assert not up, "imports that point up a floor:\n" + "\n".join(up)


def test_no_import_cycle():
    found = cycles(arrows())
    shown = ["\n".join(f"  {a.where()}: {a.source} imports {a.target} [{a.kind}]" for a in c) for c in found]
    assert not found, "import cycles:\n" + "\n\n".join(shown)


def test_only_the_cli_and_commands_parse_arguments():
    """argparse belongs to the top two floors: the library takes typed configs, never an argument namespace."""
    import ast

    top = {"commands", "entry"}
    bad = []
    for name, path in modules().items():
        if floor_of(name) in top:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            imported = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                imported = [node.module or ""]
            if "argparse" in imported:
                bad.append(f"{path.relative_to(path.parents[1])}:{node.lineno}")  # type: ignore[attr-defined]
    assert not bad, f"argparse imported below the commands: {bad}"


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        ("def f():\n    from vitreg.cli import main\n", "vitreg.cli", "local"),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from vitreg.jobs import fix\n",
            "vitreg.jobs.fix",
            "type",
        ),
        ("from vitreg import __version__\n", "vitreg", "top"),
    ],
)
def test_the_graph_sees_hidden_imports(tmp_path, monkeypatch, source, target, expected):
    """The reader finds the arrows a glance misses: inside functions, under TYPE_CHECKING, to a package's own names."""
    import import_graph

    pkg = tmp_path / "vitreg"
    for mod in ("cli", "jobs/fix", "jobs/__init__", "__init__", "data/low"):
        (pkg / f"{mod}.py").parent.mkdir(parents=True, exist_ok=True)
        (pkg / f"{mod}.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "low.py").write_text(source)
    monkeypatch.setattr(import_graph, "REPO", tmp_path)
    found = {(a.target, a.kind) for a in arrows(pkg) if a.source == "vitreg.data.low"}
    assert (target, expected) in found
