"""The report on the real pipeline: `vitreg diagnose` on a tiny random model, then `vitreg report` without a model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_report_browser import CHROMIUM_ARGS, _chromium

from vitreg.cli import main
from vitreg.report.explorer import explorer_data
from vitreg.results.rundir import load_run, outlier_count


@pytest.mark.slow
def test_diagnose_compare_then_report_without_model(tmp_path: Path, monkeypatch):
    out = tmp_path / "run"
    argv = ["diagnose", "--model", "vit_pico_patch4_32", "--random-init", "--compare", "vit_pico_patch4_32"]
    argv += ["--registers2", "4", "--random-init2", "--percentile", "98", "--images", "synthetic", "--limit", "8"]
    argv += ["--examples", "2", "--batch-size", "8", "--out", str(out)]
    assert main(argv) == 0
    run = load_run(out)
    assert [m.key for m in run.models] == ["a", "b"]
    assert run.models[1].num_registers == 4
    names = json.loads((out / "figures" / "manifest.json").read_text())["figures"]
    for name in ("norm_hist", "norm_hist_logx", "layers", "positions", "neighbors", "examples_a", "registers_b"):
        assert (out / "figures" / names[name]).is_file(), name

    import vitreg.models.load.checkpoints as checkpoints
    import vitreg.models.load.modelfile as modelfile
    import vitreg.models.presets as presets

    def boom(*args, **kwargs):
        raise AssertionError("the report must not build or load a model")

    for module, name in ((checkpoints, "load_model"), (modelfile, "build_model"), (presets, "build_model")):
        monkeypatch.setattr(module, name, boom)
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    for m in metrics["models"]:
        assert f"{100 * m['output']['outlier_ratio']:.2f}%" in page
    data = explorer_data(run)
    t0 = data["edges"][data["start"]]
    for m in run.models:
        n = outlier_count(m.arrays["hist_edges"], m.output_counts(), t0)
        assert f'id="outlier-count-{m.key}">{n}<' in page

    exe = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    if exe is None:
        pytest.skip("no chromium executable found for the browser half of this test")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        tab = browser.new_page()
        errors: list[str] = []
        tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else 0)
        tab.on("pageerror", lambda err: errors.append(str(err)))
        tab.goto((out / "report.html").resolve().as_uri())
        before = tab.inner_text("#outlier-count")
        tab.eval_on_selector("#norm-slider", "el => { el.value = 0; el.dispatchEvent(new Event('input')); }")
        after = tab.inner_text("#outlier-count")
        browser.close()
    assert int(after) == int(run.models[0].output_counts().sum()) != int(before)
    assert errors == []
