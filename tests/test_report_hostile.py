"""Hostile names in the report: image files, a model directory and a COCO category named with markup go through the
real pipeline (`vitreg diagnose`, `vitreg lost`, `vitreg report`) and show as text. The page's Content-Security-Policy
forbids the network and inline handlers; in Chromium no script from data runs and no request leaves the page."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from pathlib import Path

import numpy as np
import pytest
from markupsafe import Markup
from PIL import Image
from test_report_browser import CHROMIUM_ARGS, _chromium

from vitreg.cli import main
from vitreg.report.html import page
from vitreg.report.sections import Section

IMG_NAME = "<img src=x onerror=alert(1)>.png"  # a truncated PNG: listed among the bad images by name
GOOD_NAME = "<i onclick=alert(0)>good.png"  # a name holds no "/"
BROKEN_NAME = "<svg onload=alert(2)>.png"
CATEGORY = "<script>alert(3)</script>cat"
MODEL_DIR = "<b onmouseover=alert(4)>model $x^{2$"  # "$": not TeX on a figure either
TRAVERSAL = "../../etc/passwd"


def _csp(text: str) -> dict[str, str]:
    match = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', text)
    assert match, "no Content-Security-Policy"
    policy = html.unescape(match.group(1))
    return {d.split()[0]: d.split(" ", 1)[1] for d in (p.strip() for p in policy.split(";")) if d}


def _script(text: str) -> str:
    """The text of the page's one executable <script> (the JSON data block is not one)."""
    scripts = re.findall(r"<script>(.*?)</script>", text, re.S)
    assert len(scripts) == 1
    return scripts[0]


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images / GOOD_NAME)
    (images / IMG_NAME).write_bytes((images / GOOD_NAME).read_bytes()[:60])
    Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(images / "plain.png")
    (images / BROKEN_NAME).write_bytes(b"<html>not a png</html>")
    coco = {
        "images": [
            {"id": 1, "file_name": GOOD_NAME, "width": 32, "height": 32},
            {"id": 5, "file_name": IMG_NAME},
            {"id": 2, "file_name": BROKEN_NAME},
            {"id": 3, "file_name": TRAVERSAL},
            {"id": 4, "file_name": "plain.png", "width": 36, "height": 40},
        ],
        "categories": [{"id": 7, "name": CATEGORY}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 2, 20, 20], "area": 400},
            {"id": 2, "image_id": 4, "category_id": 7, "bbox": [5, 5, 10, 12], "area": 120},
        ],
    }
    (root / "instances.json").write_text(json.dumps(coco))
    from vitreg.models import create_model, save_model

    model = root / MODEL_DIR
    save_model(create_model("vit_pico_patch4_32"), model)
    out = root / "run"
    common = ["--model", str(model), "--batch-size", "2", "--threads", "1", "--out", str(out)]
    assert main(["diagnose", "--images", str(root / "instances.json"), "--examples", "2", *common]) == 0
    assert main(["lost", "--dataset", str(root / "instances.json"), "--examples", "2", *common]) == 0
    assert main(["report", str(out)]) == 0
    return out


def test_hostile_names_are_text_and_policy_forbids_the_rest(hostile_run: Path):
    text = (hostile_run / "report.html").read_text()
    for name in (IMG_NAME, BROKEN_NAME, MODEL_DIR):
        assert html.escape(name) in text, name
    assert "etc/passwd" in text  # refused, and listed as a bad image by its name
    for raw in ("<img src=x", "<svg", "<b onmouseover", "<script>alert", "<i onclick"):
        assert raw not in text
    csp = _csp(text)
    assert csp["default-src"] == "'none'"
    assert csp["connect-src"] == "'none'"
    assert csp["img-src"] == "data:"
    assert csp["base-uri"] == "'none'"
    assert csp["form-action"] == "'none'"
    digest = base64.b64encode(hashlib.sha256(_script(text).encode()).digest()).decode()
    assert csp["script-src"] == f"'sha256-{digest}'"  # only the page's own script: no 'unsafe-inline' for scripts
    assert text.index("Content-Security-Policy") < text.index("<style>")


def test_page_without_script_allows_none():
    text = page("t", [Section("s", "S", "<p>x</p>")], "f", script=False)
    assert _csp(text)["script-src"] == "'none'"
    assert "<script>" not in text


def _open(browser_page_factory, path: Path):
    """Load ``path`` recording dialogs, console errors, page errors, every request that reached the network layer
    (anything but the page itself; aborted there) and those the page's policy blocked before they were sent."""
    tab = browser_page_factory()
    seen: dict[str, list[str]] = {"dialogs": [], "console": [], "errors": [], "requests": [], "blocked": []}
    url = path.resolve().as_uri()

    def route(r):
        if r.request.url == url:
            r.continue_()
        else:
            seen["requests"].append(r.request.url)
            r.abort()

    tab.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
    tab.on("console", lambda msg: seen["console"].append(msg.text) if msg.type == "error" else 0)
    tab.on("pageerror", lambda err: seen["errors"].append(str(err)))
    tab.on("requestfailed", lambda req: seen["blocked"].append(req.url) if req.failure == "csp" else 0)
    tab.route("**/*", route)
    tab.goto(url)
    return tab, seen


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
    exe = _chromium()
    if exe is None:
        pytest.skip("no chromium executable found (install Debian's chromium; .ci/run does)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_browser_runs_no_script_from_data(hostile_run: Path, browser):
    tab, seen = _open(browser.new_page, hostile_run / "report.html")
    tab.wait_for_selector("#norm-slider")
    body = tab.evaluate("document.body.textContent")  # (the bad-image list sits in a closed <details>)
    for name in (IMG_NAME, BROKEN_NAME, MODEL_DIR):
        assert name in body, name  # shown as the text it is
    hostile = "img:not([src^='data:']), svg, b[onmouseover], i[onclick]"
    assert tab.evaluate(f'document.querySelectorAll("{hostile}").length') == 0
    # the page's own script (allowed by its hash) still runs: the explorer moves with the slider
    before = tab.inner_text("#outlier-count")
    tab.eval_on_selector("#norm-slider", "el => { el.value = 0; el.dispatchEvent(new Event('input')); }")
    assert tab.inner_text("#outlier-count") != before
    assert seen == {"dialogs": [], "console": [], "errors": [], "requests": [], "blocked": []}


def test_a_plain_string_is_text_whatever_it_holds(tmp_path: Path):
    """The engine escapes what is not markup: a section body given as a string shows its tags as text."""
    raw = f"<p>{IMG_NAME}</p><script>window.__inline_ran = 1</script>"
    text = page("hostile", [Section("raw", "Raw", raw)], "footer")  # type: ignore[arg-type]
    assert "<script>window.__inline_ran" not in text
    assert "&lt;script&gt;window.__inline_ran = 1&lt;/script&gt;" in text


def test_policy_stops_markup_that_escaped_escaping(tmp_path: Path, browser):
    """Defence in depth: a section that marked a name as markup by mistake (``Markup``: the template engine then
    leaves it as is) still runs none of its script and loads nothing. (Text given as a plain string is escaped by
    the engine: the test below of a plain string shows it.)"""
    raw = (
        f"<p>{IMG_NAME}</p><script>window.__inline_ran = 1</script>"
        "<img src='data:,x' onerror='window.__handler_ran = 1; alert(5)'>"
        "<link rel='stylesheet' href='https://example.invalid/x.css'>"
    )
    path = tmp_path / "page.html"
    path.write_text(page("hostile", [Section("raw", "Raw", Markup(raw))], "footer"))
    tab, seen = _open(browser.new_page, path)
    tab.wait_for_timeout(300)  # let the broken images fire their error events
    assert tab.evaluate("[window.__inline_ran, window.__handler_ran]") == [None, None]
    assert seen["dialogs"] == []
    assert seen["requests"] == []  # the policy stops the image and stylesheet before any request is sent
    assert sorted(Path(u).name for u in seen["blocked"]) == ["x", "x.css"]
    refused = [m for m in seen["console"] if "Content Security Policy" in m]
    assert any("inline event handler" in m for m in refused)
    assert any("inline script" in m for m in refused)
