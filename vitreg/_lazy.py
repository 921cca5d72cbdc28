"""Lazy package exports (PEP 562): ``from vitreg.models import load_model`` works, but importing a light submodule
such as ``vitreg.train.config`` does not pull in torch and timm through the package's ``__init__``. This is what
lets ``vitreg --help`` and argument errors answer without importing the heavy libraries."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, modules: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package`` whose names live in its submodules, given as
    ``{"submodule": "name name ..."}`` (a module with a dot, e.g. ``"vitreg.errors"``, is an absolute one)."""
    where = {name: module for module, names in modules.items() for name in names.split()}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module if "." in module else f"{package}.{module}"), name)

    def __dir__() -> list[str]:
        return sorted(where)

    return __getattr__, __dir__, sorted(where)
