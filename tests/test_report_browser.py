"""report.html in a real headless browser: the norm explorer's slider updates the outlier counts to the numbers
Python computes from the same saved histogram, with no console errors and no network request."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from report_rundir import make_run

from vitreg.report.html import write_report
from vitreg.results.rundir import load_run, outlier_count

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _chromium() -> str | None:
    for name in (os.environ.get("VITREG_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        path = name and (shutil.which(name) or (name if Path(name).is_file() else None))
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def page_and_run(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
    exe = _chromium()
    if exe is None:
        pytest.skip("no chromium executable found (install Debian's chromium; .ci/run does)")
    run_dir = make_run(tmp_path_factory.mktemp("browser") / "run")
    html_path = write_report(run_dir)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        page = browser.new_page()
        problems: list[str] = []
        page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else 0)
        page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
        # a self-contained page asks for nothing beyond its own file, and its policy blocks nothing it needs
        url = html_path.resolve().as_uri()
        page.route("**/*", lambda route: route.continue_() if route.request.url == url else route.abort())
        page.on("request", lambda req: problems.append(f"request {req.url}") if req.url != url else 0)
        page.goto(url)
        page.wait_for_selector("#norm-slider")
        yield page, load_run(run_dir), problems
        browser.close()


def _set_slider(page, index: int) -> None:
    page.eval_on_selector(
        "#norm-slider",
        """(el, v) => { el.value = v; el.dispatchEvent(new Event('input', {bubbles: true}));
                        el.dispatchEvent(new Event('change', {bubbles: true})); }""",
        str(index),
    )


def _shown(page, run) -> tuple[float, dict[str, int], dict[str, str]]:
    threshold = float(page.get_attribute("#norm-threshold", "data-threshold"))
    counts = {m.key: int(page.inner_text(f"#outlier-count-{m.key}")) for m in run.models}
    ratios = {m.key: page.inner_text(f"#outlier-ratio-{m.key}") for m in run.models}
    return threshold, counts, ratios


def _expected(run, threshold: float) -> dict[str, int]:
    return {m.key: outlier_count(m.arrays["hist_edges"], m.output_counts(), threshold) for m in run.models}


def test_slider_updates_counts_like_python(page_and_run):
    page, run, problems = page_and_run
    top = int(page.get_attribute("#norm-slider", "max"))
    t0, initial, _ = _shown(page, run)
    assert initial == _expected(run, t0)
    seen = {}
    for index in (0, top // 3, top // 2, (2 * top) // 3, top):
        _set_slider(page, index)
        t, counts, ratios = _shown(page, run)
        assert counts == _expected(run, t), f"slider at {index} (threshold {t})"
        for m in run.models:
            total = int(m.output_counts().sum())
            # two decimals; JS rounds ties up where Python rounds them to even, so compare the value
            assert abs(float(ratios[m.key].rstrip("%")) - 100 * counts[m.key] / total) <= 0.005 + 1e-9
        assert page.inner_text("#outlier-count") == str(counts["a"])  # the headline follows the first model
        seen[index] = counts["a"]
    assert seen[0] == int(run.models[0].output_counts().sum())
    assert seen[top] == 0
    assert len(set(seen.values())) >= 3  # the count really moves with the slider
    assert problems == []


def test_keyboard_and_reset(page_and_run):
    page, run, problems = page_and_run
    _set_slider(page, 0)
    page.focus("#norm-slider")
    page.keyboard.press("ArrowRight")  # a real input event, as a user's key press makes
    t, counts, _ = _shown(page, run)
    assert int(page.input_value("#norm-slider")) == 1
    assert counts == _expected(run, t)
    page.click("#explorer-reset")
    t, counts, _ = _shown(page, run)
    assert counts["a"] == run.models[0].result.output.outliers  # back at the run's threshold
    page.click("#explorer-logx")  # redraw on linear x must not throw
    page.click("#explorer-logy")
    assert problems == []
