"""Report sections. Each module in this package renders the results it owns from a run directory.

A section module exposes ``render(run_dir: Path) -> list[Section]`` and returns ``[]`` when its results are not in
``run_dir`` (so a diagnose-only run shows no probe section). Sections read saved files only, never a model.
The page builder discovers the modules and orders sections by ``order``.
"""

from __future__ import annotations

import base64
import importlib
import math
import pkgutil
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from markupsafe import Markup
from matplotlib.ticker import LogFormatterMathtext, LogFormatterSciNotation

from vitreg.report.templating import fmt as fmt  # re-exported: the sections format cells with it
from vitreg.report.templating import render


@dataclass
class Section:
    id: str  # html anchor, unique in the page
    title: str
    html: Markup  # body fragment rendered from templates; images embedded as data URIs (one self-contained file)
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


def img_tag(png: Path, alt: str = "", width: str | None = None) -> Markup:
    """An <img> with the PNG embedded as a data URI."""
    return render("img.html.j2", alt=alt, data=base64.b64encode(Path(png).read_bytes()).decode("ascii"), width=width)


def figure(png: Path, alt: str = "", caption: str | None = None, width: str | None = None) -> Markup:
    """An embedded figure and its caption (text) below it."""
    return render("figure.html.j2", img=img_tag(png, alt, width), caption=caption)


def paragraph(text: str, cls: str | None = None) -> Markup:
    """A paragraph of text (escaped)."""
    return render("paragraph.html.j2", text=text, cls=cls)


def bold(text: str) -> Markup:
    """A headline paragraph in bold (text, escaped)."""
    return render("bold.html.j2", text=text)


def note(text: str) -> Markup:
    """A note: a small paragraph of text (escaped)."""
    return paragraph(text, "note")


def table(
    rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, caption: str = "", cls: str | None = None
) -> Markup:
    """A plain HTML table of ``rows`` (dicts); ``columns`` picks and orders the keys; a row's ``__style__`` key
    styles its row."""
    from markupsafe import Markup

    if not rows:
        return Markup("")
    columns = list(columns or [k for k in rows[0] if k != "__style__"])
    return render("table.html.j2", rows=rows, columns=columns, caption=caption, cls=cls)


def stale(figure: Path, source: Path) -> bool:
    """Whether ``figure`` must be (re)drawn from ``source``: it is missing or older than its data."""
    return not figure.is_file() or figure.stat().st_mtime < source.stat().st_mtime


def save_figure(fig: Any, path: Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG via a temporary file and a rename: a re-render that fails half-way keeps the
    previous figure. Log-axis tick labels are made plain text first (:func:`plain_log_ticks`)."""
    from vitreg import atomic

    plain_log_ticks(fig)
    return atomic.write_png(path, fig, dpi)


# ------------------------------------------------------------------------------------------ figure text helpers
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def plain_number(x: float, decimal: bool) -> str:
    """A log-axis tick value as plain text: ``decimal`` gives "0.01", "2", "300"; otherwise powers of ten with
    Unicode superscripts, "10⁻⁵" or "2×10⁻⁵" (DejaVu Sans, matplotlib's default font, has those glyphs)."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    if decimal:
        return f"{x:.6g}"
    exp = math.floor(math.log10(abs(x)) + 1e-9)
    coeff = round(x / 10.0**exp, 3)
    power = "10" + str(exp).translate(_SUPERSCRIPT)
    return power if coeff == 1 else f"{coeff:g}×{power}"


class PlainLogFormatter(LogFormatterSciNotation):
    """Log-axis tick labels as plain text instead of mathtext.

    matplotlib's log formatters return mathtext (``$\\mathdefault{10^{-1}}$``); report figures are drawn with
    ``text.parse_math`` off (a "$" in a model or file name is text, not TeX), and under it that markup is printed
    verbatim. matplotlib still decides which ticks carry a label (decades only when many are shown); the label is
    a decimal when the whole axis lies in [0.0001, 100000), where decimals read more easily than powers of ten."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        if not super().__call__(x, pos):
            return ""
        if getattr(self, "_base", 10) != 10:
            return f"{x:.6g}"
        lo, hi = sorted(self.axis.get_view_interval()) if self.axis is not None else (x, x)
        return plain_number(x, decimal=lo >= 1e-4 * (1 - 1e-9) and hi < 1e5)


# room for a decade's minor labels (2, 3, 4, 6) beside its own: side by side along x, stacked (narrower) along y
INCHES_PER_LABELLED_DECADE = {"x": 1.4, "y": 1.2}


def plain_log_ticks(fig: Any) -> None:
    """Give every log axis of ``fig`` (colour bars included) a :class:`PlainLogFormatter` with the settings of the
    formatter it replaces, so no tick label depends on ``text.parse_math``.

    matplotlib labels minor ticks only below one decade, so a norm axis from 5 to 130 shows just "10" and "100";
    an axis with INCHES_PER_LABELLED_DECADE or more per decade labels some minor ticks too, in a smaller font."""
    default_minor = []  # (axis, formatter) whose minor labels follow matplotlib's default thresholds
    for ax in fig.get_axes():
        for axis in (ax.xaxis, ax.yaxis):
            for minor in (False, True):
                f = axis.get_minor_formatter() if minor else axis.get_major_formatter()
                if not isinstance(f, LogFormatterMathtext) or isinstance(f, PlainLogFormatter):
                    continue
                # (matplotlib keeps base and linthresh in private attributes, with no getters)
                base, linthresh = getattr(f, "_base", 10.0), getattr(f, "_linthresh", None)
                plain = PlainLogFormatter(
                    base, labelOnlyBase=f.labelOnlyBase, minor_thresholds=f.minor_thresholds, linthresh=linthresh
                )
                (axis.set_minor_formatter if minor else axis.set_major_formatter)(plain)
                if minor and tuple(f.minor_thresholds) == (1, 0.4):  # not a figure's own choice
                    default_minor.append((axis, plain))
    if not default_minor:
        return
    fig.draw_without_rendering()  # lay the figure out: the axes sizes below are the drawn ones (titles take room)
    width, height = fig.get_size_inches()
    for axis, plain in default_minor:
        box = axis.axes.get_position()  # figure fraction
        inches = box.width * width if axis.axis_name == "x" else box.height * height
        plain.minor_thresholds = (max(1.0, inches / INCHES_PER_LABELLED_DECADE[axis.axis_name]), 0.4)
        labels = axis.get_majorticklabels()
        axis.set_tick_params(which="minor", labelsize=0.8 * (labels[0].get_fontsize() if labels else 10))


@cache
def _text_width(text: str, size: float) -> float:
    """Width of one line of ``text`` in points at font ``size`` (matplotlib's default font)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    return TextToPath().get_text_width_height_descent(text, FontProperties(size=size), ismath=False)[0]


def wrap(text: str, inches: float, size: float) -> str:
    """``text`` broken into lines at most ``inches`` wide at font ``size``: at spaces, and after a "/" of a path, so
    a long model or file name in a title stays whole on the figure instead of running off its edge (a figure's
    layout centres a title on its axes and clips what does not fit)."""
    limit = inches * 72
    lines: list[str] = []
    line = ""
    for piece in re.split(r"(?<=[ /])", text):
        if line and _text_width((line + piece).rstrip(), size) > limit:
            lines.append(line.rstrip())
            line = ""
        while _text_width(piece.rstrip(), size) > limit and len(piece) > 1:  # a piece wider than a line: cut it
            cut = next(i for i in range(len(piece), 0, -1) if _text_width(piece[:i], size) <= limit or i == 1)
            lines.append(piece[:cut])
            piece = piece[cut:]
        line += piece
    if line.strip():
        lines.append(line.rstrip())
    return "\n".join(lines)


def title(name: str, detail: str, inches: float, size: float) -> str:
    """A figure title "name: detail" on one line when it fits in ``inches``, else the (wrapped) name with the detail
    on a line of its own, so a long model name never splits the detail ("max" / "0.0%")."""
    one = f"{name}: {detail}"
    if _text_width(one, size) <= inches * 72:
        return one
    return f"{wrap(name + ':', inches, size)}\n{wrap(detail, inches, size)}"
