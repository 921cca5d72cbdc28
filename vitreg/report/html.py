"""report.html: one self-contained page (no network: CSS, script and images inline) built from a run directory.

The page renders every section that a module in ``vitreg.report.sections`` finds results for, so diagnose, probes,
LOST and FLOPs results in one run directory all show up.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import os
from importlib import resources
from pathlib import Path

from vitreg import __version__
from vitreg.report.figures import draw_figures
from vitreg.report.rundir import RunDirError, is_diagnose_run
from vitreg.report.sections import discover


def _asset(name: str) -> str:
    return resources.files("vitreg.report").joinpath(name).read_text(encoding="utf-8")


def _title(run_dir: Path) -> str:
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        model = (metrics.get("summary") or {}).get("model")
        command = metrics.get("command", "run")
        return f"vitreg {command}: {model}" if model else f"vitreg {command}: {run_dir.name}"
    except (OSError, ValueError, AttributeError):
        return f"vitreg report: {run_dir.name}"


def build_page(run_dir: Path) -> str:
    """The page's HTML from the sections found in ``run_dir`` (figures must already be drawn)."""
    run_dir = Path(run_dir)
    sections = discover(run_dir)
    if not sections:
        raise RunDirError(f"nothing to report in {run_dir}: no metrics.json or other results a section can read")
    nav = "".join(f'<a href="#{html.escape(s.id)}">{html.escape(s.title)}</a>' for s in sections)
    body = "\n".join(
        f'<section id="{html.escape(s.id)}"><h2>{html.escape(s.title)}</h2>\n{s.html}\n</section>' for s in sections
    )
    title = html.escape(_title(run_dir))
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    # the script goes last so every element it looks up exists; "</" cannot occur in it unescaped
    script = _asset("explorer.js").replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
{_asset("report.css")}
</style>
</head>
<body>
<header><h1>{title}</h1><nav>{nav}</nav></header>
<main>
{body}
</main>
<footer><p class="note">Drawn by vitreg {__version__} from the files in {html.escape(run_dir.name)}/ on {stamp};
<code>vitreg report DIR</code> re-renders it without a model.</p></footer>
<script>
{script}
</script>
</body>
</html>
"""


def write_report(run_dir: Path, log_x: bool | None = None) -> Path:
    """Draw DIR/figures/*.png from the saved files and write DIR/report.html; returns the page's path.

    ``log_x``: histogram x axis shown first (None: the run's config, else chosen from the data); both are drawn.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    if is_diagnose_run(run_dir):
        draw_figures(run_dir, log_x=log_x)
    page = build_page(run_dir)
    path = run_dir / "report.html"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)  # an existing report survives a failed re-render
    return path
