"""Which layer: the per-block diagnosis (the auto rule's test, outliers and norm share per block, the strongest block)
and ``--layer``, the block whose output tokens the output-level analyses use.

The model with artifacts is the planted pico ViT of test_ttr.py (a hand-made register neuron in block 1 writes a
high-norm token at one grid cell from block 1 on), saved as a model folder so `vitreg diagnose` loads it by path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_ttr import LAYER, POS, planted_model

from vitreg.analysis.norms import outlier_mask
from vitreg.cli import main
from vitreg.data.transforms import ImageTransform
from vitreg.jobs.diagnose import DiagnoseConfig, ModelEntry, diagnose
from vitreg.jobs.specs import ImageSpec, Runtime
from vitreg.models import Inspector, load_model, save_model
from vitreg.results import read_result
from vitreg.results.diagnose import DiagnoseResult

RUNTIME = Runtime(precision="fp32", threads=1)
IMAGES = ImageSpec(src="synthetic", limit=32, batch_size=16)
FIXTURES = Path(__file__).parent / "fixtures" / "rundir_v1"
COCO_JSON = Path(__file__).resolve().parents[1].parent / "shared/data/coco-mini/annotations/instances_train2017.json"


@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory) -> Path:
    return save_model(planted_model(), tmp_path_factory.mktemp("planted") / "model")


def _diagnose(spec: str, out: Path, layer: int = -1, **kw) -> DiagnoseResult:
    cfg = DiagnoseConfig(models=[ModelEntry(key="a", spec=spec, **kw)], images=IMAGES, runtime=RUNTIME,
                         examples=4, layer=layer, out=str(out))  # fmt: skip
    return diagnose(cfg)


@pytest.fixture(scope="module")
def planted_run(planted_dir, tmp_path_factory) -> DiagnoseResult:
    return _diagnose(str(planted_dir), tmp_path_factory.mktemp("diag") / "run")


def test_every_block_has_its_test_outliers_and_norm_share(planted_run: DiagnoseResult):
    m = planted_run.models[0]
    assert m.layer == m.output_layer == m.depth - 1 == 3  # the default: the last block
    assert [d.layer for d in m.layers] == [0, 1, 2, 3]
    for d in m.layers:
        assert d.ashman_d is not None
        assert d.delta_bic is not None
        assert d.dip_ratio is not None
        assert 0.0 <= d.auto_outlier_ratio <= 1.0
        assert 0.0 <= d.outlier_norm_share <= 1.0
        assert d.outlier_ratio == d.auto_outlier_ratio  # the run's rule is auto
    before, after = m.layers[:LAYER], m.layers[LAYER:]
    assert all(d.auto_threshold is None and d.outlier_norm_share == 0 for d in before)
    for d in after:  # one planted outlier per image from the neuron's block on
        assert d.bimodal
        assert d.auto_outlier_ratio == pytest.approx(1 / 64)
        assert d.auto_norm_ratio > 2
        # the norm share is the outliers' part of the block's total norm: r q / (1 + r (q - 1))
        r, q = d.auto_outlier_ratio, d.auto_norm_ratio
        assert d.outlier_norm_share == pytest.approx(r * q / (1 + r * (q - 1)), rel=1e-9)
    assert m.first_outlier_layer == LAYER
    best = max(after, key=lambda d: d.outlier_norm_share)
    assert m.strongest_layer == best.layer
    assert "largest share" in m.strongest_definition
    assert planted_run.summary is not None
    assert planted_run.summary.strongest_layer == m.strongest_layer


def test_no_bimodal_block_means_no_strongest_block(tmp_path: Path):
    m = _diagnose("vit_pico_patch4_32", tmp_path / "r", random_init=True).models[0]
    if any(d.auto_threshold is not None for d in m.layers):
        pytest.skip("this random model happens to have an outlier mode")
    assert m.strongest_layer is None


def _block_norms(model_dir: Path, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """(images, gh, gw) patch norms of block ``layer`` and their dataset indices, straight from the Inspector over the
    images the diagnosis saw."""
    model = load_model(str(model_dir)).eval()
    ds = IMAGES.open(ImageTransform.from_model(model, mode="resize"), seed=RUNTIME.seed)
    norms, index = [], []
    for batch in IMAGES.loader(ds):
        cap = Inspector(model).run(batch["image"], layers=[layer], attention_layers=None)
        norms.append(cap.split_tokens(layer).patches.norm(dim=-1).double().numpy())
        index += [int(i) for i in batch["index"]]
    return np.concatenate(norms), np.array(index)


@pytest.mark.parametrize("layer", [0, 2, -3])
def test_layer_picks_the_block_the_output_analyses_use(planted_dir: Path, tmp_path: Path, layer: int):
    run = _diagnose(str(planted_dir), tmp_path / "r", layer=layer)
    m = run.models[0]
    block = layer % m.depth
    assert m.layer == block
    assert run.config["layer"] == layer
    norms, index = _block_norms(planted_dir, block)
    mask, applied, _ = outlier_mask(norms, "auto")
    # the rule and its outliers are those of block L's tokens
    assert m.rule.threshold == applied
    assert m.output.patch_tokens == norms.size
    assert m.output.outliers == int(mask.sum())
    normal = norms[~mask]
    assert m.output.mean_norm_normal == pytest.approx(normal.mean(), rel=1e-6)
    if mask.any():
        assert m.output.mean_norm_outlier == pytest.approx(norms[mask].mean(), rel=1e-6)
        assert tuple(m.positions.top[0][:2]) == POS  # the planted cell, seen at block L
    assert m.positions.outliers == int(mask.sum())
    assert m.neighbors.outlier_tokens == int(mask.sum())
    # the pictures: block L's norm maps of the first images
    arrays = np.load(tmp_path / "r" / "arrays_a.npz")
    order = np.argsort(index)[: len(arrays["ex_index"])]
    np.testing.assert_array_equal(arrays["ex_index"], index[order])
    np.testing.assert_allclose(arrays["ex_norm"], norms[order], rtol=1e-6)
    # the per-block table does not depend on --layer
    assert [d.auto_outlier_ratio for d in m.layers] == pytest.approx(
        [d.auto_outlier_ratio for d in _diagnose(str(planted_dir), tmp_path / "last").models[0].layers]
    )


@pytest.mark.parametrize("layer", ["4", "-5"])
def test_bad_layer_is_a_one_line_error(planted_dir: Path, tmp_path: Path, capsys, layer: str):
    args = ["diagnose", "--model", str(planted_dir), "--images", "synthetic", "--limit", "2", "--threads", "1"]
    assert main([*args, "--layer", layer, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"--layer {layer}" in err[0]
    assert "4 blocks" in err[0]
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_terminal_and_report_mark_the_analysed_and_strongest_blocks(planted_dir: Path, tmp_path: Path, capsys):
    args = ["diagnose", "--model", str(planted_dir), "--images", "synthetic", "--limit", "16", "--threads", "1"]
    assert main([*args, "--precision", "fp32", "--layer", "2", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    m = read_result(tmp_path / "r", DiagnoseResult).models[0]
    rows = {int(line.split()[0]): line for line in out.splitlines() if line.strip()[:1].isdigit()}
    assert set(rows) == {0, 1, 2, 3}
    assert "< analysed" in rows[2]
    assert all("< analysed" not in rows[i] for i in (0, 1, 3))
    assert "* strongest" in rows[m.strongest_layer]
    assert f"strongest artifact signature: block {m.strongest_layer}" in out
    page = (tmp_path / "r" / "report.html").read_text()
    assert "Analysed block (bold): 2 of 4" in page
    assert f"Strongest artifact signature (shaded): block {m.strongest_layer}" in page
    assert page.count('style="background:#fff1bf') == 1


def test_old_run_directories_still_load_and_render(tmp_path: Path):
    from vitreg.report.sections.diagnose import render

    run = tmp_path / "diag"
    shutil.copytree(FIXTURES / "diag", run)
    old = json.loads((run / "metrics.json").read_text())
    assert "layer" not in old["models"][0]  # written before --layer existed
    m = read_result(run, DiagnoseResult).models[0]
    assert m.layer is None
    assert m.strongest_layer is None
    assert m.strongest_definition == ""
    assert m.output_layer == m.depth - 1  # those runs analysed the last block
    assert all(d.ashman_d is None and d.outlier_norm_share is None for d in m.layers)
    html = "".join(s.html for s in render(run))
    assert f"Analysed block (bold): {m.depth - 1} of {m.depth}" in html
