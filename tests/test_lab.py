from __future__ import annotations

import json

import numpy as np
import pytest

from vitreg.cli import main
from vitreg.config import ConfigError
from vitreg.data.synthetic import SceneConfig, render_scene
from vitreg.lab import load_grid

TINY = """
base: artifact_lab
seeds: [0]
registers: [0, 2]
diagnose_limit: 16
points:
  tiny: {model: vit_pico_patch4_32, depth: null, embed_dim: null, num_heads: null, steps: 6, batch_size: 8,
         data: {train_size: 64, eval_size: 16, scene: {colors: [red, blue]}}, track_every: 3, eval_every: 6,
         checkpoint_every: 6}
"""


def test_lab_trains_diagnoses_and_tabulates_a_grid(tmp_path, capsys, one_thread):
    grid = tmp_path / "grid.yaml"
    grid.write_text(TINY)
    # two trainings side by side, each in its own `python -m vitreg` process on one thread
    assert main(["lab", str(grid), "--out", str(tmp_path / "lab"), "--jobs", "2"]) == 0
    cfg = (tmp_path / "lab" / "tiny" / "seed0" / "reg2" / "config.yaml").read_text()
    assert "threads: 1" in cfg
    rows = json.loads((tmp_path / "lab" / "lab.json").read_text())["rows"]
    assert [(r["point"], r["seed"], r["registers"]) for r in rows] == [("tiny", 0, 0), ("tiny", 0, 2)]
    diag = json.loads((tmp_path / "lab" / "tiny" / "seed0" / "diagnose" / "metrics.json").read_text())
    assert [r["outlier_ratio"] for r in rows] == [m["output"]["outlier_ratio"] for m in diag["models"]]
    assert [m["registers"] for m in diag["models"]] == [0, 2]
    md = (tmp_path / "lab" / "lab.md").read_text()
    assert "| tiny | 0 | 2 |" in md
    assert "model=vit_pico_patch4_32" in md
    capsys.readouterr()
    # everything cached the second time (the same settings, threads included)
    assert main(["lab", str(grid), "--out", str(tmp_path / "lab"), "--jobs", "2"]) == 0
    assert capsys.readouterr().out.count(": cached (") == 3


def test_lab_grid_errors_name_the_bad_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: artifact_lab\npoints: {a: {lrr: 1}}\n")
    with pytest.raises(ConfigError, match="lrr"):
        load_grid(bad)
    bad.write_text("base: artifact_lab\npoints: {a: {data: {scene: {colors: [red, teal]}}}}\n")
    with pytest.raises(ConfigError, match="teal"):
        load_grid(bad)
    bad.write_text("base: artifact_lab\nseedz: [0]\npoints: {a: {lr: 1}}\n")
    with pytest.raises(ConfigError, match="seedz"):
        load_grid(bad)


def test_distinct_task_counts_distinct_colours():
    cfg = SceneConfig(img_size=32, task="distinct", min_objects=2, max_objects=5, colors=("red", "green", "blue"))
    assert cfg.num_classes == 3
    for i in range(40):
        s = render_scene(cfg, i)
        assert s.label == len(set(np.asarray(s.colors).tolist())) - 1


GPU_TINY = """
base: gpu_lab
seeds: [0]
registers: [0, 1]
diagnose_limit: 8
points:
  tiny: {model: vit_pico_patch4_32, img_size: 32, steps: 3, batch_size: 8, warmup_steps: 1, compile: false,
         precision: fp32, data: {train_size: 1000, eval_size: 16, scene: {max_objects: 4}}, track_every: 3,
         track_batch: 8, eval_every: 3, checkpoint_every: 3, log_every: 1}
"""


def test_the_gpu_lab_path_runs_on_a_cpu_in_a_tiny_setting(tmp_path, capsys, one_thread):
    """The gpu_lab preset's path (device scenes, sink statistics, fp16 export) end to end, on the CPU: the GPU
    itself is not tested here."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(GPU_TINY)
    out, export = tmp_path / "lab", tmp_path / "export"
    assert main(["lab", str(grid), "--out", str(out), "--export", str(export)]) == 0
    start = json.loads((out / "tiny" / "seed0" / "reg1" / "metrics.jsonl").read_text().splitlines()[0])
    assert start["data"].startswith("device scenes task=count")
    rows = json.loads((out / "lab.json").read_text())["rows"]
    assert [r["registers"] for r in rows] == [0, 1]
    assert all(r["sink_heads"] is not None and 0 <= r["sink_top_mass"] <= 1 for r in rows)
    diag = json.loads((out / "tiny" / "seed0" / "diagnose" / "metrics.json").read_text())
    assert diag["config"]["images"]["src"] == "device-scenes"
    assert len(diag["models"][0]["sinks"]) == 2  # one entry per block
    assert "sink heads (block)" in (out / "lab.md").read_text()
    for n in (0, 1):
        entry = export / f"tiny-seed0-reg{n}"
        prov = json.loads((entry / "provenance.json").read_text())
        assert prov["weights_dtype"] == "float16"
        assert prov["steps"] == 3
        assert prov["registers"] == n
        assert prov["command"].startswith("vitreg lab")
        assert set(prov["cpu"]) >= {"model", "flags", "native_bf16"}
