"""The diagnose report: figures and a self-contained report.html drawn from a contract-conforming run directory."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from report_rundir import make_run

from vitreg.cli import main
from vitreg.errors import RunDirError
from vitreg.report.explorer import explorer_data
from vitreg.report.html import build_page, write_report
from vitreg.report.sections import Section
from vitreg.results.rundir import load_run, outlier_count

FIGURES = ["norm_hist", "norm_hist_logx", "layers", "positions", "neighbors"]
FIGURES += [f"{kind}_{key}" for kind in ("examples", "registers") for key in ("a", "b")]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    run_dir = make_run(tmp_path_factory.mktemp("report") / "run")
    write_report(run_dir)
    return run_dir


def _external_refs(page: str) -> list[str]:
    """src/href/url()/@import values that would reach the network (anything but data: URIs and #anchors)."""
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", page)
    refs += re.findall(r"""url\(\s*["']?([^"')]+)""", page) + re.findall(r"@import\s+[\"']?([^\"';]+)", page)
    return [r for r in refs if not (r.startswith("data:") or r.startswith("#"))]


def test_figures_and_self_contained_page(rendered: Path):
    for name in FIGURES:
        png = rendered / "figures" / f"{name}.png"
        assert png.is_file(), name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    page = (rendered / "report.html").read_text()
    assert _external_refs(page) == []
    assert "http://" not in page
    assert "https://" not in page
    imgs = re.findall(r"<img [^>]*src=\"([^\"]{0,30})", page)
    assert len(imgs) >= len(FIGURES) - 1  # the other histogram scale is embedded too, in a <details>
    assert all(s.startswith("data:image/png;base64,") for s in imgs)
    for element_id in ("norm-slider", "outlier-count", "outlier-ratio", "norm-canvas", "explorer-data"):
        assert f'id="{element_id}"' in page
    assert len(page) < 5e6  # a few MB at most


def test_summary_numbers_come_from_metrics(rendered: Path):
    metrics = json.loads((rendered / "metrics.json").read_text())
    page = (rendered / "report.html").read_text()
    a, b = metrics["models"]
    assert f"{100 * a['output']['outlier_ratio']:.2f}%" in page
    assert f"{100 * a['neighbors']['share_outliers_redundant']:.2f}%" in page
    assert f"{a['output']['norm_ratio']:.3f}".rstrip("0") in page
    assert a["verdict"] in page
    assert b["verdict"] in page
    assert "none (no outliers)" in page  # model b has no threshold
    # labels of one spec are told apart by key and register count
    assert "[a: 0 reg]" in page
    assert "[b: 4 reg]" in page


def test_explorer_initial_counts_match_python(rendered: Path):
    run = load_run(rendered)
    data = explorer_data(run)
    t0 = data["edges"][data["start"]]
    page = (rendered / "report.html").read_text()
    for m in run.models:
        expected = outlier_count(m.arrays["hist_edges"], m.output_counts(), t0)
        assert f'id="outlier-count-{m.key}">{expected}<' in page
    # model a: the run's threshold (100) splits the two modes, so the snapped edge counts exactly its outliers
    assert outlier_count(run.models[0].arrays["hist_edges"], run.models[0].output_counts(), t0) == (
        run.models[0].result.output.outliers
    )


def test_no_outliers_starts_above_every_token(tmp_path: Path):
    run = load_run(make_run(tmp_path / "run", keys=(("a", 4, False),)))
    data = explorer_data(run)
    m = run.models[0]
    assert data["start"] == len(data["edges"]) - 1
    assert outlier_count(m.arrays["hist_edges"], m.output_counts(), data["edges"][data["start"]]) == 0
    assert sum(data["models"][0]["counts"]) == m.result.output.patch_tokens  # trimming dropped no token


def test_report_command_rerenders_without_a_model(rendered: Path, tmp_path: Path, monkeypatch, capsys):
    import vitreg.models.load.checkpoints as checkpoints
    import vitreg.models.load.modelfile as modelfile
    import vitreg.models.presets as presets

    def boom(*args, **kwargs):
        raise AssertionError("the report must not build or load a model")

    for module, name in ((checkpoints, "load_model"), (modelfile, "build_model"), (presets, "build_model")):
        monkeypatch.setattr(module, name, boom)
    run_dir = tmp_path / "copy"
    shutil.copytree(rendered, run_dir)
    shutil.rmtree(run_dir / "figures")
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir), "--log-x"]) == 0
    assert (run_dir / "report.html").is_file()
    assert json.loads((run_dir / "figures" / "manifest.json").read_text())["log_x"] is True
    page = (run_dir / "report.html").read_text()
    norms = page[page.index('id="diagnose-norms"') :]
    logx = (run_dir / "figures" / "norm_hist_logx.png").read_bytes()
    import base64

    # the log-x histogram is the one shown first
    assert norms.index(base64.b64encode(logx).decode()[:200]) < norms.index("<details>")
    assert "wrote" in capsys.readouterr().out


def test_sweep_draws_per_entry_summary(tmp_path: Path):
    from vitreg.report import plot_norms

    run = load_run(make_run(tmp_path / "sweep", keys=(("s0", 0, False), ("s1", 4, True))))
    assert run.is_sweep
    ratio_ax, norm_ax = plot_norms.sweep(run).axes
    # the plotted points are the metrics' values (percent, and NaN where a model has no outliers)
    ratios = [100 * m.result.output.outlier_ratio for m in run.models]
    np.testing.assert_allclose(ratio_ax.lines[0].get_ydata(), ratios)
    norm = norm_ax.lines[0].get_ydata()
    assert np.isnan(norm[0])
    assert norm[1] == pytest.approx(run.models[1].result.output.norm_ratio)
    assert not load_run(make_run(tmp_path / "cmp")).is_sweep  # keys a/b: a comparison, drawn side by side


def test_page_renders_every_discovered_section(rendered: Path, monkeypatch):
    import vitreg.report.html as html_mod

    real = html_mod.discover(rendered)
    extra = Section("probe-results", "Probes", "<p id='probe-marker'>probe table</p>", order=80)
    monkeypatch.setattr(html_mod, "discover", lambda run_dir: [*real, extra])
    page = build_page(rendered)
    for s in [*real, extra]:
        assert f'<section id="{s.id}">' in page
        assert f'href="#{s.id}"' in page
    assert "probe-marker" in page


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("no_metrics", "nothing to report"),
        ("bad_json", "not valid JSON"),
        ("no_npz", "arrays_b.npz not found"),
        ("pickled_npz", "plain .npz"),
        ("bad_shape", "hist_counts has shape"),
    ],
)
def test_bad_run_dir_clear_error_keeps_old_report(rendered: Path, tmp_path: Path, capsys, breakage: str, message: str):
    run_dir = tmp_path / "copy"
    shutil.copytree(rendered, run_dir)
    before = (run_dir / "report.html").read_bytes()
    if breakage == "no_metrics":
        (run_dir / "metrics.json").unlink()
    elif breakage == "bad_json":
        (run_dir / "metrics.json").write_text('{"command": "diagnose", ')
    elif breakage == "no_npz":
        (run_dir / "arrays_b.npz").unlink()
    elif breakage == "pickled_npz":
        np.savez(run_dir / "arrays_b.npz", hist_edges=np.array([object()], dtype=object))
    else:
        with np.load(run_dir / "arrays_a.npz") as z:
            arrays = dict(z)
        arrays["hist_counts"] = arrays["hist_counts"][:, :-3]
        np.savez(run_dir / "arrays_a.npz", **arrays)
    assert main(["report", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    if breakage != "no_metrics":
        with pytest.raises((RunDirError, FileNotFoundError)):
            load_run(run_dir)
    assert (run_dir / "report.html").read_bytes() == before  # nothing lost


def test_report_of_missing_dir(tmp_path: Path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err
