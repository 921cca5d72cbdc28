"""Report sections. Each module in this package renders the results it owns from a run directory.

A section module exposes ``render(run_dir: Path) -> list[Section]`` and returns ``[]`` when its results are not in
``run_dir`` (so a diagnose-only run shows no probe section). Sections read saved files only, never a model.
The page builder discovers the modules and orders sections by ``order``.
"""

from __future__ import annotations

import base64
import html
import importlib
import pkgutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Section:
    id: str  # html anchor, unique in the page
    title: str
    html: str  # body fragment; images embedded as data URIs so the page stays one self-contained file
    order: int = 100  # lower first


def discover(run_dir: Path) -> list[Section]:
    """All sections every module here renders for ``run_dir``, sorted by ``order`` then id."""
    out: list[Section] = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        out.extend(module.render(Path(run_dir)))
    return sorted(out, key=lambda s: (s.order, s.id))


def img_tag(png: Path, alt: str = "", width: str | None = None) -> str:
    """An <img> with the PNG embedded as a data URI."""
    data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    style = f' style="max-width:{width}"' if width else ""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"{style}>'


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-3 or abs(v) >= 1e5 else f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return html.escape(str(v))


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, caption: str = "") -> str:
    """A plain HTML table of ``rows`` (dicts); ``columns`` picks and orders the keys."""
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{fmt(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def stale(figure: Path, source: Path) -> bool:
    """Whether ``figure`` must be (re)drawn from ``source``: it is missing or older than its data."""
    return not figure.is_file() or figure.stat().st_mtime < source.stat().st_mtime


def save_figure(fig: Any, path: Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG via a temporary file and a rename: a re-render that fails half-way keeps the
    previous figure."""
    from vitreg import atomic

    return atomic.write_png(path, fig, dpi)
