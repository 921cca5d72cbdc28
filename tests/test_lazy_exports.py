"""Each package ``__init__`` that exports names lazily (:mod:`vitreg._lazy`) lists them twice: in its table for
``lazy_exports`` (what runs) and in its ``if TYPE_CHECKING:`` imports (what type checkers and editors see). The two
must agree, and every exported name must exist in the module the table names."""

from __future__ import annotations

import ast
import importlib

import pytest
from import_graph import PACKAGE, lazy_table, module_name

INITS = sorted(PACKAGE.rglob("__init__.py"))
LAZY = [p for p in INITS if lazy_table(ast.parse(p.read_text(encoding="utf-8"))) is not None]


def _type_checking_imports(tree: ast.Module) -> dict[str, str]:
    """``{name: module}`` of the imports under ``if TYPE_CHECKING:``."""
    out: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom), ast.unparse(imp)
                module = imp.module or ""
                out |= {(a.asname or a.name): module for a in imp.names}
    return out


def test_the_lazy_packages_are_found():
    names = {module_name(p) for p in LAZY}
    assert {"vitreg", "vitreg.models", "vitreg.data", "vitreg.train"} <= names


@pytest.mark.parametrize("init", LAZY, ids=lambda p: module_name(p))
def test_lazy_table_matches_type_checking_imports(init):
    package = module_name(init)
    tree = ast.parse(init.read_text(encoding="utf-8"))
    table = lazy_table(tree)
    assert table is not None
    _, names = table
    runs = {name: m if "." in m else f"{package}.{m}" for name, m in names.items()}
    seen = _type_checking_imports(tree)
    only_table = sorted(set(runs) - set(seen))
    only_imports = sorted(set(seen) - set(runs))
    assert not only_table, f"{package}: exported lazily but not imported under TYPE_CHECKING: {only_table}"
    assert not only_imports, f"{package}: imported under TYPE_CHECKING but not in the lazy table: {only_imports}"
    moved = {n: (runs[n], seen[n]) for n in runs if runs[n] != seen[n]}
    assert not moved, f"{package}: the table and the TYPE_CHECKING imports name different modules: {moved}"
    for name, module in runs.items():
        assert hasattr(importlib.import_module(module), name), f"{package}.{name}: {module} has no {name}"
    imported = importlib.import_module(package)
    assert sorted(imported.__all__) == sorted(runs)
    for name in runs:
        assert getattr(imported, name) is getattr(importlib.import_module(runs[name]), name)


@pytest.mark.parametrize("init", [p for p in INITS if p not in LAZY], ids=lambda p: module_name(p))
def test_eager_exports_exist(init):
    package = importlib.import_module(module_name(init))
    missing = [n for n in getattr(package, "__all__", []) if not hasattr(package, n)]
    assert not missing, f"{package.__name__}.__all__ names what it does not have: {missing}"
