"""`vitreg diagnose` end to end on a tiny random model and generated scenes: the run directory contract, --compare,
the rules, bad input, and a 2-process torchrun run that must equal the single-process one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitreg.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "vit_pico_patch4_32", "--random-init", "--threads", "1", "--precision", "fp32"]
CONTRACT_ARRAYS = {
    "hist_edges",
    "hist_counts",
    "cls_hist",
    "reg_hist",
    "position_counts",
    "position_totals",
    "neighbor_edges",
    "neighbor_hist_outlier",
    "neighbor_hist_normal",
    "mean_attention",
    "query_names",
    "register_similarity",
    "ex_images",
    "ex_norm",
    "ex_attention",
    "ex_pca",
    "ex_outlier",
}


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("diag") / "run"
    args = ["diagnose", *TINY, "--compare", "vit_pico_patch4_32", "--registers2", "4", "--random-init2"]
    args += ["--images", "synthetic", "--limit", "16", "--percentile", "90", "--examples", "4", "--batch-size", "8"]
    rc = main([*args, "--no-report", "--out", str(out)])
    assert rc == 0
    return out


def test_contract_files(compare_run: Path):
    m = json.loads((compare_run / "metrics.json").read_text())
    assert m["command"] == "diagnose"
    assert m["config"]["rule"] == {"kind": "percentile", "value": 90}
    assert [r["key"] for r in m["models"]] == ["a", "b"]
    assert m["summary"]["images"] == 16
    assert m["summary"]["rule"] == "percentile"
    a, b = m["models"]
    assert a["registers"] == 0
    assert b["registers"] == 4
    assert a["grid"] == [8, 8]
    assert a["depth"] == 2
    assert a["output"]["outlier_ratio"] == pytest.approx(0.1, abs=0.03)  # 90th percentile at bin resolution
    assert len(a["layers"]) == 2
    assert a["masks"]["available"] is True
    assert isinstance(a["verdict"], str)
    assert a["verdict"].endswith(".")
    for key, reg in (("a", 0), ("b", 4)):
        z = np.load(compare_run / f"arrays_{key}.npz")
        assert set(z.files) >= CONTRACT_ARRAYS
        assert "ex_mask" in z.files
        assert z["hist_counts"].shape == (2, len(z["hist_edges"]) - 1)
        assert z["reg_hist"].shape[0] == reg
        assert z["register_similarity"].shape == (reg, reg)
        assert list(z["query_names"]) == ["cls"] + [f"reg{i}" for i in range(reg)]
        assert z["mean_attention"].shape == (1 + reg, 8, 8)
        assert z["ex_images"].shape == (4, 32, 32, 3)
        assert z["ex_images"].dtype == np.uint8
        assert z["ex_attention"].shape == (4, 1 + reg, 8, 8)
        assert z["ex_outlier"].dtype == bool
        assert np.isfinite(z["ex_pca"]).all()
        assert np.isfinite(z["ex_norm"]).all()


def test_position_counts_sum_to_totals(compare_run: Path):
    m = json.loads((compare_run / "metrics.json").read_text())
    for r in m["models"]:
        z = np.load(compare_run / f"arrays_{r['key']}.npz")
        assert (z["position_totals"] == 16).all()  # every image gives one token per position
        assert z["position_totals"].sum() == r["output"]["patch_tokens"] == z["hist_counts"][-1].sum()
        assert z["position_counts"].sum() == r["output"]["outliers"] > 0
        assert (z["neighbor_hist_outlier"].sum(), z["neighbor_hist_normal"].sum()) == (
            r["output"]["outliers"],
            r["output"]["patch_tokens"] - r["output"]["outliers"],
        )


def test_auto_on_random_model_says_no_outliers(tmp_path: Path, capsys):
    rc = main(["diagnose", *TINY, "--images", "synthetic", "--limit", "8", "--out", str(tmp_path)])
    assert rc == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["summary"]["threshold"] is None
    assert m["summary"]["outlier_ratio"] == 0
    assert m["summary"]["verdict"].startswith("No high-norm outliers")
    assert "verdict: No high-norm outliers" in capsys.readouterr().out
    assert (tmp_path / "report.html").is_file()  # diagnose renders the report at the end


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--cutoff", "-3"], "cutoff"),
        (["--percentile", "100"], "percentile"),
        (["--images", "/nonexistent/folder"], "nonexistent"),
        (["--weights2", "w.safetensors"], "--compare"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path: Path, capsys, extra: list[str], message: str):
    assert main(["diagnose", *TINY, "--limit", "2", "--out", str(tmp_path / "r"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert message in err[0]
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_bad_images_are_skipped_and_reported(tmp_path: Path):
    src = tmp_path / "imgs"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(src / f"ok{i}.png")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert main(["diagnose", *TINY, "--images", str(src), "--out", str(tmp_path / "r")]) == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["summary"]["images"] == 3
    assert [Path(b["path"]).name for b in m["models"][0]["bad_images"]] == ["broken.png"]
    assert m["models"][0]["masks"]["available"] is False
    assert main(["diagnose", *TINY, "--images", str(src), "--strict", "--out", str(tmp_path / "s")]) == 2


def _metrics_close(a, b, path=""):
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            if k != "config":
                _metrics_close(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _metrics_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-9), path
    else:
        assert a == b, path


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(tmp_path: Path):
    common = [*TINY, "--images", "synthetic", "--limit", "16", "--percentile", "90", "--batch-size", "1", "--no-report"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    single = [sys.executable, "-m", "vitreg.cli", "diagnose", *common, "--out", str(tmp_path / "one")]
    multi = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    multi += ["-m", "vitreg.cli", "diagnose", *common, "--out", str(tmp_path / "two")]
    for cmd in (single, multi):
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-2000:]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["config"]["world_size"] == 2
    assert one["config"]["world_size"] == 1
    _metrics_close(one, two)
    za, zb = np.load(tmp_path / "one" / "arrays_a.npz"), np.load(tmp_path / "two" / "arrays_a.npz")
    assert set(za.files) == set(zb.files)
    for name in za.files:
        if za[name].dtype.kind == "f":
            np.testing.assert_allclose(za[name], zb[name], rtol=1e-6, atol=1e-7, err_msg=name)
        else:
            np.testing.assert_array_equal(za[name], zb[name], err_msg=name)


def test_sweep_and_cutoff(tmp_path: Path):
    entries = ["vit_pico_patch4_32", "vit_pico_patch4_32_reg2"]
    args = ["diagnose", "--sweep", *entries, "--random-init", "--threads", "1", "--limit", "4", "--cutoff", "3.5"]
    assert main([*args, "--no-report", "--out", str(tmp_path)]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert [(r["key"], r["registers"]) for r in m["models"]] == [("s0", 0), ("s1", 2)]
    for r in m["models"]:
        z = np.load(tmp_path / f"arrays_{r['key']}.npz")
        assert r["rule"]["threshold"] == 3.5
        assert 3.5 in z["hist_edges"]
        assert r["output"]["outliers"] == int((z["hist_counts"][-1][z["hist_edges"][:-1] >= 3.5]).sum())
        assert r["output"]["outliers"] == int(z["position_counts"].sum())


def test_coco_masks(tmp_path: Path, coco_mini: Path):
    src = coco_mini / "annotations" / "instances_train2017.json"
    assert main(["diagnose", *TINY, "--images", str(src), "--limit", "4", "--no-report", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "metrics.json").read_text())["models"][0]
    assert r["images"] == 4
    assert r["masks"]["available"] is True
    assert r["masks"]["images_with_mask"] == 4
    assert 0 <= r["masks"]["share_patches_background"] <= 1


def test_compare_labels_say_what_differs(compare_run: Path):
    """--compare M --registers2 4 names the second model by its registers, not by the spec both share."""
    labels = [m["label"] for m in json.loads((compare_run / "metrics.json").read_text())["models"]]
    assert labels == ["vit_pico_patch4_32 (random init)", "vit_pico_patch4_32 +4 reg (random init)"]


def test_every_model_is_checked_before_any_work(tmp_path: Path, capsys, monkeypatch):
    """A second model without weights fails at once, before the first model reads a single image."""
    import vitreg.jobs.diagnose as job

    def no_pass(*args, **kwargs):
        raise AssertionError("the first model's pass must not start")

    monkeypatch.setattr(job, "_diagnose_entry", no_pass)
    rc = main(["diagnose", *TINY, "--compare", "vit_pico_patch4_32", "--out", str(tmp_path / "r")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no weights on disk for 'vit_pico_patch4_32'" in err
    assert "--random-init" in err
    assert not (tmp_path / "r").exists()


def test_every_kept_example_is_drawn(tmp_path: Path):
    """--examples 8 keeps 8 pictures and the figure shows all 8 (it used to stop at 6 without saying so)."""
    from vitreg.report import plot_maps
    from vitreg.results import load_run

    assert main(["diagnose", *TINY, "--limit", "10", "--examples", "8", "--no-report", "--out", str(tmp_path)]) == 0
    m = load_run(tmp_path).models[0]
    assert len(m.arrays["ex_images"]) == 8
    fig = plot_maps.examples(m)
    rows = {round(ax.get_position().y0, 3) for ax in fig.axes}
    assert len(rows) == 8
    assert main(["diagnose", *TINY, "--examples", "17", "--out", str(tmp_path / "x")]) == 2  # more is refused


@pytest.mark.slow
def test_diagnose_lost_and_probe_on_a_dinov3_architecture(tmp_path: Path):
    """A DINOv3 model (timm's Eva: RoPE, 4 storage tokens) through the three commands, end to end."""
    model = ["--model", "timm:vit_small_patch16_dinov3", "--random-init", "--img-size", "64", "--threads", "1"]
    assert main(["diagnose", *model, "--limit", "8", "--examples", "2", "--out", str(tmp_path / "d")]) == 0
    m = json.loads((tmp_path / "d" / "metrics.json").read_text())["models"][0]
    assert m["registers"] == 4
    assert m["grid"] == [4, 4]
    assert m["depth"] == 12
    assert m["register_analysis"]["query_names"] == ["cls", "reg0", "reg1", "reg2", "reg3"]
    assert (tmp_path / "d" / "report.html").is_file()
    assert main(["lost", *model, "--limit", "4", "--out", str(tmp_path / "l")]) == 0
    lost = json.loads((tmp_path / "l" / "lost.json").read_text())
    assert lost["registers"] == 4
    assert lost["images"] == 4
    probe = ["--limit", "12", "--epochs", "2", "--seeds", "1", "--out", str(tmp_path / "p")]
    assert main(["probe", *model, *probe]) == 0
    p = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert p["registers"] == 4
    assert p["local"]["grid"] == [4, 4]


def test_every_result_says_how_the_images_were_prepared(tmp_path: Path):
    """metrics.json, probe.json and lost.json name the geometry, size, interpolation and the model's own mean/std, and
    the diagnose report shows it."""
    from vitreg.models import load_model

    model = ["--model", "vit_pico_patch4_32", "--random-init", "--threads", "1"]
    assert main(["diagnose", *model, "--limit", "4", "--examples", "0", "--out", str(tmp_path / "d")]) == 0
    mean = load_model("vit_pico_patch4_32", random_init=True).vitreg_config.mean
    said = json.loads((tmp_path / "d" / "metrics.json").read_text())["models"][0]["preprocessing"]
    # a vitreg model's own processor squashes: said, with whose way it is
    assert said.startswith("as its processor does it (vitreg): squashed to 32x32 (aspect ratio not kept), bicubic")
    assert f"{mean[0]:.3f}" in said
    assert "images prepared" in (tmp_path / "d" / "report.html").read_text()
    probe = ["--limit", "8", "--epochs", "1", "--seeds", "1", "--probes", "local", "--out", str(tmp_path / "p")]
    assert main(["probe", *model, *probe]) == 0
    assert json.loads((tmp_path / "p" / "probe.json").read_text())["preprocessing"] == said
    assert main(["lost", *model, "--limit", "2", "--out", str(tmp_path / "l")]) == 0
    lost = json.loads((tmp_path / "l" / "lost.json").read_text())["preprocessing"]
    assert lost.startswith("scenes drawn at the input size: squashed to 32x32")
    assert lost.endswith(said.split("): ", 1)[1])  # the same geometry, interpolation, mean and std
