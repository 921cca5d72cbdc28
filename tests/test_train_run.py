"""End-to-end `vitreg train` runs on tiny models: records, kept checkpoints, sweeps, folder and .npz data."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from PIL import Image

from vitreg.cli import main
from vitreg.models import load_model
from vitreg.train import run_training
from vitreg.train.tracking import read_metrics

TINY = [
    "model=vit_pico_patch4_32",
    "progress=false",
    "batch_size=16",
    "data.train_size=64",
    "data.eval_size=32",
    "track_batch=8",
    "warmup_steps=1",
    "threads=1",
]


def test_cli_run_writes_config_metrics_checkpoints_and_model(tmp_path, capsys):
    out = tmp_path / "run"
    args = [*TINY, "registers=2", "steps=4", "log_every=2", "track_every=2", "eval_every=4", "keep_steps=2,4"]
    assert main(["train", "--out", str(out), *args]) == 0
    assert "held-out top-1" in capsys.readouterr().out
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["registers"] == [2]
    assert saved["steps"] == 4
    assert saved["data"]["train_size"] == 64
    records = read_metrics(out / "metrics.jsonl")
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "start"
    assert kinds[-1] == "final"
    assert "eval" in kinds
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [2, 4]
    assert all(np.isfinite(r["loss"]) and r["images_per_s"] > 0 and r["global_batch"] == 16 for r in train)
    tracks = [r for r in records if r["kind"] == "track"]
    assert [r["step"] for r in tracks] == [0, 2, 4]
    layer = tracks[-1]["layers"][-1]
    assert len(tracks[-1]["layers"]) == 2  # pico has 2 blocks
    assert layer["p50"] <= layer["p90"] <= layer["p98"] <= layer["p99"] <= layer["max"]
    assert 0.0 <= layer["outlier_ratio"] <= 1.0
    assert layer["cls_norm"] > 0
    assert len(layer["register_norms"]) == 2
    ev = next(r for r in records if r["kind"] == "eval")
    assert ev["images"] == 32
    assert 0.0 <= ev["top1"] <= 1.0
    for step in (2, 4):  # kept checkpoints are model directories load_model understands
        m = load_model(out / "checkpoints" / f"step_{step:06d}")
        assert m.num_reg_tokens == 2
    final = load_model(out)
    kept = load_model(out / "checkpoints" / "step_000004")
    for (k, a), (_, b) in zip(final.state_dict().items(), kept.state_dict().items(), strict=True):
        assert (a == b).all(), k


def test_registers_sweep_one_directory_per_value(tmp_path):
    out = tmp_path / "sweep"
    results = run_training(None, [*TINY, "registers=0,2", "steps=2", "eval_every=2"], out=out)
    assert [r.out.name for r in results] == ["reg0", "reg2"]
    for n in (0, 2):
        sub = out / f"reg{n}"
        assert yaml.safe_load((sub / "config.yaml").read_text())["registers"] == [n]
        assert load_model(sub).num_reg_tokens == n
    assert yaml.safe_load((out / "config.yaml").read_text())["registers"] == [0, 2]
    # same seed and data: the two runs saw the same held-out set
    starts = [read_metrics(out / f"reg{n}" / "metrics.jsonl")[0] for n in (0, 2)]
    assert starts[0]["data"] == starts[1]["data"]


def test_npz_data(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "cifar.npz"
    # (N, 3, H, W) at 40 px: transposed and resized to the model's 32 px
    np.savez(path, images=rng.integers(0, 256, (40, 3, 40, 40), dtype=np.uint8), labels=np.arange(40) % 4)
    out = tmp_path / "run"
    (r,) = run_training(None, [*TINY, "data.kind=npz", f"data.path={path}", "steps=2", "eval_every=2"], out=out)
    start = read_metrics(out / "metrics.jsonl")[0]
    assert "36 train, 4 held-out, 4 classes" in start["data"]
    assert load_model(out).num_classes == 4
    assert r.eval["images"] == 4


def test_bad_npz_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "bad.npz"
    np.savez(path, pixels=np.zeros((2, 3)))
    assert main(["train", "--out", str(tmp_path / "r"), "data.kind=npz", f"data.path={path}", "steps=1"]) == 2
    assert "needs arrays 'images' and 'labels'" in capsys.readouterr().err


def test_image_folder_data_skips_bad_files(tmp_path):
    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for name in ("cats", "dogs", "owls"):
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (24, 36, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    (root / "dogs" / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "run"
    run_training(None, [*TINY, "data.kind=folder", f"data.path={root}", "steps=2", "eval_every=2"], out=out)
    start = read_metrics(out / "metrics.jsonl")[0]
    assert start["skipped_images"] == 1
    assert "3 classes" in start["data"]
    assert load_model(out).num_classes == 3


@pytest.mark.parametrize("pool", ["avg"])
def test_avg_pool_without_cls(tmp_path, pool):
    out = tmp_path / "avg"
    run_training(None, [*TINY, f"global_pool={pool}", "class_token=false", "registers=1", "steps=1"], out=out)
    track = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "track"][-1]
    assert track["layers"][0]["cls_norm"] is None
    assert len(track["layers"][0]["register_norms"]) == 1
