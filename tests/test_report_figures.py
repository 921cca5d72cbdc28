"""The report's figures as a person sees them: drawing them warns of nothing (no collapsed layout), log axes are
labelled with plain numbers (report figures are drawn with ``text.parse_math`` off, under which matplotlib's
mathtext tick labels printed as ``$\\mathdefault{10^{-1}}$``), and no title, label or legend runs off the figure,
even for models named by long file paths.

The run directory is the two-model diagnosis of tests/report_rundir.py plus the fix.json and neurons.json a
`vitreg fix` run adds, so one ``write_report`` draws every diagnose figure and the fix section's three.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from report_rundir import DEPTH, make_run

from vitreg import atomic
from vitreg.report import figures as figures_module
from vitreg.report.html import write_report
from vitreg.report.sections import fix as fix_section
from vitreg.report.sections import plain_number, save_figure, title, wrap
from vitreg.results.codec import to_json
from vitreg.results.fix import (
    FixLayer,
    FixResult,
    NeuronSearch,
    NeuronsFile,
    RegisterNeuron,
    SweepPoint,
    TopKSweep,
)
from vitreg.results.rundir import write_result

LABELS = {  # long names, as a model loaded from a file is labelled
    "a": "/data/checkpoints/a-team/experiment-2024-06-with-a-long-name/vit_base_patch16_224_original.safetensors",
    "b": "/data/checkpoints/a-team/experiment-2024-06-with-a-long-name/vit_base_patch16_224 +test-time registers",
}


def _point(k: int, share: float) -> SweepPoint:
    return SweepPoint(k=k, outlier_share=share, max_patch_norm=300.0 - 50 * k, register_norm=250.0 if k else None,
                      cls_cosine=1.0 - 0.002 * k, top1=None, agreement=None)  # fmt: skip


def _add_fix_results(run: Path) -> None:
    """fix.json and neurons.json as `vitreg fix` writes them for model a fixed into model b."""
    neurons = [RegisterNeuron(layer=1, index=i, score=9.0 - i, selectivity=20.0 - i, sparsity=0.99) for i in range(6)]
    search = NeuronSearch(neurons=neurons, detect_layer=DEPTH - 1, top_layer=2, rule="auto", value=None,
                          threshold=100.0, bimodal=True, outlier_share=0.04, norm_ratio=9.0, images=20,
                          images_with_outliers=20)  # fmt: skip
    atomic.write_json(
        run / "neurons.json",
        to_json(NeuronsFile(model=LABELS["a"], spec=LABELS["a"], registers=1, top_k=2, search=search)),
    )
    points = [_point(0, 0.04), _point(1, 0.01), _point(2, 0.0), _point(4, 0.0), _point(8, 0.0)]
    sweep = TopKSweep(threshold=100.0, clear=0.1, before=points[0], chosen=2, cleared=True, points=points)
    layers = [FixLayer(layer=i, threshold=100.0 if i >= 2 else None, share_before=0.04 if i >= 2 else 0.0,
                       share_after=0.0, threshold_after=None) for i in range(DEPTH)]  # fmt: skip
    result = FixResult(model=LABELS["a"], registers=1, top_k=2, auto=True, outcome="moved 2 register neurons",
                       sweep=sweep, layers=layers)  # fmt: skip
    write_result(run, result)


@pytest.fixture(scope="module")
def fix_run(tmp_path_factory) -> Path:
    run = make_run(tmp_path_factory.mktemp("figures") / "run")
    metrics = json.loads((run / "metrics.json").read_text())
    for m in metrics["models"]:
        m["label"] = m["spec"] = LABELS[m["key"]]
    (run / "metrics.json").write_text(json.dumps(metrics))
    _add_fix_results(run)
    return run


@pytest.fixture(scope="module")
def drawn(fix_run) -> tuple[dict[str, Figure], list[warnings.WarningMessage]]:
    """Every figure ``write_report`` saves (by file name) and the warnings raised while it drew them."""
    saved: dict[str, Figure] = {}

    def keep(fig: Figure, path: Path, dpi: int = 100) -> Path:
        saved[Path(path).name] = fig
        return save_figure(fig, path, dpi)

    with pytest.MonkeyPatch.context() as mp:
        for module in (figures_module, fix_section):
            mp.setattr(module, "save_figure", keep)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            write_report(fix_run)
    return saved, caught


def test_every_figure_is_drawn(drawn, fix_run):
    saved, _ = drawn
    expected = {"norm_hist.png", "norm_hist_logx.png", "layers.png", "positions.png", "neighbors.png",
                "examples_a.png", "examples_b.png", "registers_a.png", "registers_b.png",
                "fix_sweep.png", "fix_layers.png", "fix_attention.png"}  # fmt: skip
    assert set(saved) == expected
    assert "Test-time registers" in (fix_run / "report.html").read_text()


def test_drawing_the_report_warns_of_nothing(drawn):
    """Two models side by side used to collapse the layers figure's constrained layout (matplotlib's "axes sizes
    collapsed to zero" UserWarning, printed by every `vitreg fix`), drawn with its heatmaps squeezed to slivers."""
    _, caught = drawn
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []


# plain numbers: 0.01, 300, 10⁻⁵, 2×10⁻⁵
NUMBER = re.compile(r"^(\d+(\.\d+)?(×10[⁻⁰¹²³⁴⁵⁶⁷⁸⁹]+)?|10[⁻⁰¹²³⁴⁵⁶⁷⁸⁹]+)$")


def _tick_labels(fig: Figure) -> list[tuple[str, str]]:
    """(scale, text) of every non-empty tick label of every axis of ``fig`` (colour bars included)."""
    out = []
    for ax in fig.get_axes():
        for axis in (ax.xaxis, ax.yaxis):
            for minor in (False, True):
                out += [(axis.get_scale(), t.get_text()) for t in axis.get_ticklabels(minor=minor) if t.get_text()]
    return out


def test_log_axes_are_labelled_with_plain_numbers(drawn):
    saved, _ = drawn
    log_labels = 0
    for name, fig in saved.items():
        for scale, text in _tick_labels(fig):
            assert "$" not in text, f"{name}: tick label {text!r} is TeX markup"
            assert "\\" not in text, f"{name}: tick label {text!r} is TeX markup"
            if scale == "log":
                assert NUMBER.match(text), f"{name}: log tick label {text!r}"
                log_labels += 1
    assert log_labels >= 10  # the histograms, the layers heatmaps and their colour bars, the top-k sweep


def test_no_text_runs_off_the_figure(drawn):
    """Titles, labels, tick labels, legends and annotations all lie inside the figure (a long model name used to
    push a centred title off both edges of the positions and registers figures)."""
    saved, _ = drawn
    outside = []
    for name, fig in sorted(saved.items()):
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        box = fig.get_tightbbox(canvas.get_renderer())  # inches
        width, height = fig.get_size_inches()
        slack = 0.02
        if box.x0 < -slack or box.y0 < -slack or box.x1 > width + slack or box.y1 > height + slack:
            x0, y0, x1, y1 = (round(float(v), 2) for v in box.extents)
            outside.append(f"{name}: drawn over x {x0}..{x1}, y {y0}..{y1} of a {width:.2f} x {height:.2f} in figure")
    assert outside == []


def test_plain_numbers():
    assert [plain_number(v, decimal=True) for v in (0.001, 0.1, 1, 20, 300, 10000)] == [
        "0.001", "0.1", "1", "20", "300", "10000"
    ]  # fmt: skip
    assert [plain_number(v, decimal=False) for v in (1e-5, 2e-5, 1, 100, 3e4)] == [
        "10⁻⁵", "2×10⁻⁵", "10⁰", "10²", "3×10⁴"
    ]  # fmt: skip


def test_wrap_breaks_long_names_at_slashes_and_spaces():
    text = LABELS["a"] + ": first outlier layer 2"
    lines = wrap(text, 2.5, 9).split("\n")
    assert len(lines) > 1
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")  # nothing lost
    assert lines[0].endswith("/")  # broken after a path separator, not inside a name
    assert title("tiny", "max 1.0%", 3.0, 9) == "tiny: max 1.0%"
    assert title(LABELS["b"], "max 1.0%", 3.0, 9).split("\n")[-1] == "max 1.0%"  # the detail stays whole
