"""The import graph of the vitreg package, read from each module's AST (nothing is imported).

Every arrow counts, wherever the import sits:

* imports at the top of a module, and imports inside functions (a function-local import hides an arrow from the
  reader, not from the program);
* imports under ``if TYPE_CHECKING:``: they run only for the type checker, but they are arrows all the same (mypy
  follows them, and a lower module that names a higher one's types depends on it);
* the lazy-export tables of package ``__init__``s (``lazy_exports(__name__, {"module": "names"})``): each module of
  the table is an arrow from the package, taken when a name is first used;
* importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first: an arrow to each package above the target
  that does not also hold the importing module.

Dynamic imports (``importlib.import_module`` of a computed name) are not read: the CLI's dispatch to
``vitreg.commands.<name>`` and the report's sections are the only ones, and both point down.

``python tests/import_graph.py`` prints the floors of :mod:`test_layering`, every arrow that points up and every
cycle.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "vitreg"


@dataclass(frozen=True)
class Arrow:
    source: str  # importing module, e.g. "vitreg.data.sources"
    target: str  # imported module (or package)
    path: Path
    line: int
    kind: str  # "top", "local" (inside a function), "type" (TYPE_CHECKING), "lazy" (export table), "package"

    def where(self) -> str:
        return f"{self.path.relative_to(REPO).as_posix()}:{self.line}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p): p for p in sorted(package.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def lazy_table(tree: ast.Module) -> tuple[int, dict[str, str]] | None:
    """``(line, {name: module})`` of the ``lazy_exports(__name__, {...})`` call of a package ``__init__``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_exports":
            table = ast.literal_eval(node.args[1])
            return node.lineno, {name: module for module, names in table.items() for name in names.split()}
    return None


class _Reader(ast.NodeVisitor):
    """The imports of one module, each with the place it sits (top, function, TYPE_CHECKING)."""

    def __init__(self, name: str, is_package: bool) -> None:
        self.name, self.is_package = name, is_package
        self.found: list[tuple[str, int, str]] = []  # (absolute dotted name, line, kind)
        self.kind = "top"

    def _in(self, kind: str, nodes: list[ast.stmt]) -> None:
        outer, self.kind = self.kind, kind if self.kind == "top" else self.kind
        for n in nodes:
            self.visit(n)
        self.kind = outer

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._in("type", node.body)
            self._in(self.kind, node.orelse)
        else:
            self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._in("local", node.body)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [(a.name, node.lineno, self.kind) for a in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            package = self.name if self.is_package else self.name.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        # `from vitreg import atomic` imports the module vitreg.atomic; `from vitreg.x import f` imports vitreg.x
        self.found += [(f"{base}:{a.name}", node.lineno, self.kind) for a in node.names]


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The module ``name`` imports: ``a.b`` (``import a.b``) or ``a.b:c`` (``from a.b import c``: the module
    ``a.b.c`` when there is one, else ``a.b``, whose attribute ``c`` is)."""
    base, _, attr = name.partition(":")
    if attr and f"{base}.{attr}" in known:
        return f"{base}.{attr}"
    while base and base not in known:
        base = base.rpartition(".")[0]
    return base or None


def arrows(package: Path = PACKAGE) -> list[Arrow]:
    """Every arrow between two modules of ``package`` (see the module docstring for what counts)."""
    known = modules(package)
    out: set[Arrow] = set()
    for name, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        reader = _Reader(name, path.name == "__init__.py")
        reader.visit(tree)
        table = lazy_table(tree)
        if table is not None:
            line, names = table
            reader.found += [(m if "." in m else f"{name}.{m}", line, "lazy") for m in names.values()]
        for dotted, line, kind in reader.found:
            target = _resolve(dotted, known) if dotted.partition(":")[0].split(".")[0] == "vitreg" else None
            if target is None or target == name:
                continue
            out.add(Arrow(name, target, path, line, kind))
            parts = target.split(".")
            for i in range(1, len(parts)):  # the packages whose __init__ runs first
                parent = ".".join(parts[:i])
                if parent in known and not (name == parent or name.startswith(parent + ".")):
                    out.add(Arrow(name, parent, path, line, "package"))
    # one arrow per (source, target, line): `from a import b, c` names a twice
    best: dict[tuple[str, str, int], Arrow] = {}
    for a in sorted(out, key=lambda a: (a.source, a.target, a.line, a.kind)):
        best.setdefault((a.source, a.target, a.line), a)
    return sorted(best.values(), key=lambda a: (a.where(), a.target))


def cycles(edges: list[Arrow]) -> list[list[Arrow]]:
    """One cycle through each knot (strongly connected component of more than one module), as its arrows."""
    graph: dict[str, list[Arrow]] = {}
    for a in edges:
        graph.setdefault(a.source, []).append(a)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    knots: list[set[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm; the package has ~150 modules, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for a in graph.get(v, []):
            if a.target not in index:
                connect(a.target)
                low[v] = min(low[v], low[a.target])
            elif a.target in on_stack:
                low[v] = min(low[v], index[a.target])
        if low[v] == index[v]:
            knot = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                knot.add(w)
                if w == v:
                    break
            if len(knot) > 1:
                knots.append(knot)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_cycle_in(knot, graph) for knot in knots]


def _cycle_in(knot: set[str], graph: dict[str, list[Arrow]]) -> list[Arrow]:
    """A shortest cycle through the knot's first module (breadth-first inside the knot)."""
    start = min(knot)
    came: dict[str, Arrow] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for a in graph.get(v, []):
                if a.target == start:
                    path = [a]
                    while path[0].source != start:
                        path.insert(0, came[path[0].source])
                    return path
                if a.target in knot and a.target not in came:
                    came[a.target] = a
                    nxt.append(a.target)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # a knot always has one


if __name__ == "__main__":
    from test_layering import FLOORS, arrows_up, floor_of

    edges = arrows()
    for i, (floor, members) in enumerate(FLOORS):
        print(f"{i:2d} {floor:12s} {' '.join(members)}")
    up = arrows_up(edges)
    print(f"\n{len(up)} arrow(s) up")
    for a in up:
        print(f"  {a.where()}: {a.source} ({floor_of(a.source)}) -> {a.target} ({floor_of(a.target)}) [{a.kind}]")
    found = cycles(edges)
    print(f"{len(found)} cycle(s)")
    for c in found:
        print("  " + " -> ".join([c[0].source] + [f"{a.target} ({a.where()})" for a in c]))
