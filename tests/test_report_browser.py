"""report.html in a real headless browser: the norm explorer's slider updates the outlier counts to the numbers
Python computes from the same saved histogram, with no console errors and no network request; and the pages of a
real `vitreg diagnose` and `vitreg reproduce --quick` run, screenshotted, show their figures (not a blank page)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from browser_support import CHROMIUM_ARGS, PageProblems, chromium, ink, launched, screenshot  # noqa: F401
from report_rundir import make_run

from vitreg.cli import main
from vitreg.report.html import write_report
from vitreg.results.rundir import load_run, outlier_count

_chromium = chromium  # test_report_hostile imports _chromium and CHROMIUM_ARGS from here


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module (playwright's sync API allows one instance at a time per thread)."""
    with launched() as b:
        yield b


@pytest.fixture(scope="module")
def page_and_run(tmp_path_factory, browser):
    run_dir = make_run(tmp_path_factory.mktemp("browser") / "run")
    html_path = write_report(run_dir)
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
    page.close()


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


# ------------------------------------------------------------------------------------------------ screenshots
def _run(argv: list[str]) -> None:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        rc = main(argv)
    assert rc == 0, buf.getvalue()[-3000:]


@pytest.fixture(scope="module")
def diagnose_page(tmp_path_factory) -> Path:
    """report.html of a real `vitreg diagnose` run at its tiny setting (random pico ViT, 8 generated scenes)."""
    out = tmp_path_factory.mktemp("diagnose-page") / "run"
    _run(["diagnose", "--model", "vit_pico_patch4_32", "--random-init", "--limit", "8", "--threads", "1",
          "--out", str(out)])  # fmt: skip
    return out / "report.html"


@pytest.fixture(scope="module")
def reproduce_page(quick_run) -> Path:
    """report.html of the session's `vitreg reproduce --quick` run (tests/conftest.py)."""
    return quick_run[0] / "report.html"


def _assert_drawn(png: Path, figures: int) -> None:
    """A page showing ``figures`` or more figures: many colours (a blank page has one, text a few hundred) and ink
    on a good share of it."""
    seen = ink(png)
    assert seen.width >= 800, seen
    assert seen.colours >= 1000, seen
    assert seen.drawn >= 0.05, seen
    assert seen.height >= 300 * figures, seen  # every figure took its room: none collapsed to nothing


def test_diagnose_page_screenshot_shows_its_figures(diagnose_page, browser, tmp_path):
    figures = diagnose_page.read_text().count("data:image/png;base64,")
    assert figures >= 6  # histogram (2), layers, positions, neighbours, pictures, registers
    png = screenshot(diagnose_page, tmp_path / "diagnose-report.png", browser=browser)
    _assert_drawn(png, figures - 1)  # the linear-x histogram hides in a closed <details>
    # one section alone, as a reviewer of that section would look at it
    section = screenshot(diagnose_page, tmp_path / "diagnose-layers.png", selector="#diagnose-layers", browser=browser)
    seen = ink(section)
    assert seen.colours >= 1000
    assert seen.drawn >= 0.1, seen


@pytest.mark.slow
def test_reproduce_page_screenshot_shows_its_figures(reproduce_page, browser, tmp_path):
    figures = reproduce_page.read_text().count("data:image/png;base64,")
    assert figures >= 6
    _assert_drawn(screenshot(reproduce_page, tmp_path / "reproduce-report.png", browser=browser), figures)


def test_part_one_sections_screenshot(reproduce_page, browser, tmp_path):
    """Part I of the demo's report as a person sees it: the norms of the released model without and with its
    test-time register, and the test-time-register table with its maps."""
    for section in ("I-fig3", "I-ttr"):
        png = screenshot(reproduce_page, tmp_path / f"{section}.png", selector=f"#{section}", browser=browser)
        seen = ink(png)
        assert seen.colours >= 500, (section, seen)  # a figure, not only text
        assert seen.drawn >= 0.05, (section, seen)
        assert seen.height >= 300, (section, seen)


def test_screenshot_reports_what_went_wrong_on_the_page(browser, tmp_path):
    """The helper fails on a console error, a network request and an image that does not decode."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><body><p>x</p><img alt='broken figure' src='data:image/png;base64,AAAA'>"
        "<img alt='remote' src='https://example.invalid/x.png'><script>console.error('boom')</script></body></html>"
    )
    with pytest.raises(PageProblems) as err:
        screenshot(page, tmp_path / "bad.png", browser=browser)
    text = str(err.value)
    assert "console error: boom" in text
    assert "request https://example.invalid/x.png" in text
    assert "image did not decode: broken figure" in text
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    seen = ink(screenshot(blank, tmp_path / "blank.png", browser=browser))
    assert (seen.colours, seen.drawn) == (1, 0.0)
