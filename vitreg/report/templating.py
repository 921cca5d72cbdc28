"""The report's HTML from templates (Jinja2, autoescaped): every value a template shows is text, escaped by the
engine, so a file, model or category name is never markup; HTML comes only from the templates in
``vitreg/report/templates`` and from other rendered templates (``Markup``). Sections build their data in Python
and render it here; nothing assembles HTML from strings."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup


def fmt(v: Any, digits: int = 3) -> str:
    """A table cell's text (the template escapes it): "–" for none, yes/no, numbers to ``digits`` digits."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-3 or abs(v) >= 1e5 else f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return str(v)


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("vitreg.report", "templates"),
        autoescape=True,  # every template: the values are text, whatever their file name
        undefined=StrictUndefined,  # a name a template expects and the data lacks is an error, not a blank
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    env.globals["fmt"] = fmt
    return env


def render(template: str, **context: Any) -> Markup:
    """``template`` (a file of vitreg/report/templates) rendered with ``context``: markup, safe to nest."""
    return Markup(environment().get_template(template).render(**context))


def join(parts: Iterable[Markup | str]) -> Markup:
    """Rendered parts one after the other (plain strings among them are escaped as text)."""
    return Markup("").join(parts)
