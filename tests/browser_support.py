"""Look at a report page the way a person does: in a real headless Chromium, as a PNG screenshot.

``screenshot(html)`` opens a page (nothing but the page itself may be fetched), waits for its images, fails with
:class:`PageProblems` when the page logged a console error, threw, asked the network for anything or holds an image
that did not decode, and returns the PNG's path. ``selector`` shoots one element (a report section) instead of the
whole page. ``ink(png)`` measures how much is drawn on a PNG, to tell a rendered page from a blank one.

playwright's sync API runs one instance per thread at a time: a module whose fixture already holds a browser (from
:func:`launched`) passes it as ``screenshot(..., browser=b)``; without one, ``screenshot`` launches its own.

Set ``VITREG_SCREENSHOTS=DIR`` to keep a copy of every screenshot in DIR, to look at after the run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1200, "height": 900}  # a laptop window


def chromium() -> str | None:
    """The Chromium executable to drive: $VITREG_CHROMIUM, else the first browser on PATH."""
    for name in (os.environ.get("VITREG_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        path = name and (shutil.which(name) or (name if Path(name).is_file() else None))
        if path:
            return path
    return None


@contextlib.contextmanager
def launched() -> Iterator[Any]:
    """A headless Chromium (a playwright ``Browser``) for the ``with`` block; skips the calling test, naming what is
    missing, when playwright or a Chromium executable is not installed."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
    exe = chromium()
    if exe is None:
        pytest.skip("no chromium executable found (install Debian's chromium; .ci/run does)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class PageProblems(AssertionError):
    """What went wrong while the page loaded, one line each."""


# every <img> loaded and decoded: a figure that failed to decode has naturalWidth 0
_BROKEN_IMAGES = """async () => {
    const imgs = [...document.images];
    await Promise.all(imgs.map(i => i.decode().catch(() => null)));
    return imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt || '(no alt)');
}"""


def screenshot(
    html: Path, png: Path | None = None, *, selector: str | None = None, full_page: bool = True, browser: Any = None
) -> Path:
    """A PNG of ``html`` as headless Chromium renders it (the whole page, or the element ``selector`` picks);
    returns its path (default: beside the page, ``.png``). Raises :class:`PageProblems` listing console errors,
    script errors, network requests and broken images; skips the test when no browser is available.
    ``browser``: a playwright Browser to open the page in (see the module's note), else one launched for this call."""
    if browser is None:
        with launched() as own:
            return screenshot(html, png, selector=selector, full_page=full_page, browser=own)
    html = Path(html).resolve()
    png = Path(png) if png is not None else html.with_suffix(".png")
    url = html.as_uri()
    problems: list[str] = []

    def route(r) -> None:
        if r.request.url == url:
            r.continue_()
        else:  # a self-contained report fetches nothing
            problems.append(f"request {r.request.url}")
            r.abort()

    tab = browser.new_page(viewport=VIEWPORT)
    try:
        tab.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else 0)
        tab.on("pageerror", lambda err: problems.append(f"page error: {err}"))
        tab.route("**/*", route)
        tab.goto(url, wait_until="load")
        problems += [f"image did not decode: {alt}" for alt in tab.evaluate(_BROKEN_IMAGES)]
        if selector is None:
            tab.screenshot(path=str(png), full_page=full_page)
        else:
            tab.locator(selector).screenshot(path=str(png))
    finally:
        tab.close()
    if problems:
        raise PageProblems("\n".join(problems))
    if keep := os.environ.get("VITREG_SCREENSHOTS"):
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, Path(keep) / png.name)
    return png


@dataclass(frozen=True)
class Ink:
    width: int
    height: int
    colours: int  # distinct RGB values
    drawn: float  # share of pixels that are not (near) white


def ink(png: Path) -> Ink:
    """How much is drawn on ``png``: a blank page is one colour and no ink; a page of text a few hundred colours
    (anti-aliasing) and a few % ink; figures add thousands of colours."""
    from PIL import Image

    with Image.open(png) as im:
        rgb = np.asarray(im.convert("RGB"))  # (H, W, 3) uint8
    flat = rgb.reshape(-1, 3).astype(np.uint32)
    colours = len(np.unique((flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]))
    drawn = float((rgb.min(axis=2) < 240).mean())
    return Ink(width=rgb.shape[1], height=rgb.shape[0], colours=colours, drawn=drawn)
