"""report.html: one self-contained page (no network: CSS, script and images inline) built from a run directory.

The page renders every section that a module in ``vitreg.report.sections`` finds results for, so diagnose, probes,
LOST and FLOPs results in one run directory all show up. :func:`page` is the one layout (header, navigation,
sections, footer) that every vitreg page uses, reproduce's included.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from vitreg import atomic
from vitreg._version import __version__
from vitreg.errors import RunDirError
from vitreg.report.sections import Section, discover

if TYPE_CHECKING:
    from markupsafe import Markup


def asset(name: str) -> str:
    return resources.files("vitreg.report").joinpath(name).read_text(encoding="utf-8")


def _title(run_dir: Path) -> str:
    from vitreg.results.diagnose import DiagnoseResult
    from vitreg.results.rundir import has_result, read_result

    if has_result(run_dir, DiagnoseResult):
        try:
            metrics = read_result(run_dir, DiagnoseResult)
        except RunDirError:
            return f"vitreg report: {run_dir.name}"
        if metrics.summary is not None:
            return f"vitreg diagnose: {metrics.summary.model}"
    return f"vitreg report: {run_dir.name}"


def content_security_policy(script: str | None) -> str:
    """The page's policy: nothing from the network, no plugins, no forms, and only the page's own script, allowed by
    the hash of its exact text, so markup smuggled in through data (an inline ``onerror=``, a ``<script>``) never
    runs. Inline styles stay allowed (figures set their width in ``style``); images are data: URIs only."""
    allowed = "'none'"
    if script is not None:
        digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
        allowed = f"'sha256-{digest}'"
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src {allowed}",
            "style-src 'unsafe-inline'",
            "img-src data:",
            "connect-src 'none'",
            "font-src 'none'",
            "media-src 'none'",
            "object-src 'none'",
            "frame-src 'none'",
            "worker-src 'none'",
            "manifest-src 'none'",
            "form-action 'none'",
            "base-uri 'none'",
        ]
    )


def page(
    title: str, sections: Sequence[Section], footer: str | Markup, intro: str | Markup = "", script: bool = True
) -> str:
    """A whole self-contained page: ``sections`` in order, each with an anchor in the navigation bar. ``footer`` and
    ``intro``: text, or markup rendered from a template."""
    from markupsafe import Markup

    from vitreg.report.templating import render

    # the page's own script and style sheet are markup by construction; "</" cannot occur in the script unescaped,
    # so no text in it can end the script element
    code = "\n" + asset("explorer.js").replace("</", "<\\/") + "\n"
    csp = content_security_policy(code if script else None)
    return (
        render(
            "page.html.j2",
            title=title,
            csp=csp,
            css=Markup(asset("report.css")),
            intro=intro,
            sections=sections,
            footer=footer,
            script=Markup(code) if script else None,
        )
        + "\n"
    )


def build_page(run_dir: Path) -> str:
    """The page's HTML from the sections found in ``run_dir`` (figures must already be drawn)."""
    run_dir = Path(run_dir)
    sections = discover(run_dir)
    if not sections:
        raise RunDirError(f"nothing to report in {run_dir}: no metrics.json or other results a section can read")
    from vitreg.report.templating import render

    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    footer = render("footer.html.j2", version=__version__, folder=run_dir.name, stamp=stamp)
    return page(_title(run_dir), sections, footer)


def write_report(run_dir: Path, log_x: bool | None = None) -> Path:
    """Draw DIR/figures/*.png from the saved files and write DIR/report.html; returns the page's path.

    ``log_x``: histogram x axis shown first (None: the run's config, else chosen from the data); both are drawn.
    """
    import matplotlib

    from vitreg.report.figures import draw_figures
    from vitreg.results.rundir import is_diagnose_run

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory not found: {run_dir}")
    # a "$" in a file, model or category name is text on a figure, not TeX (bad TeX would stop the drawing); tick
    # labels that matplotlib writes as mathtext are made plain text when a figure is saved (sections.plain_log_ticks)
    with matplotlib.rc_context({"text.parse_math": False}):
        if is_diagnose_run(run_dir):
            draw_figures(run_dir, log_x=log_x)
        text = build_page(run_dir)  # sections may draw figures of their own
    # an existing report survives a failed re-render: it is replaced only by a complete page
    return atomic.write_text(run_dir / "report.html", text)
