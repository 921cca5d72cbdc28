"""Scale-out: two CPU processes under torchrun (gloo) train the same replicas on the expected global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vitreg.train.tracking import read_metrics


@pytest.mark.slow
def test_torchrun_two_processes_agree(tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "vitreg.cli", "train", "--out", str(out),
        "model=vit_pico_patch4_32", "steps=3", "batch_size=12", "data.train_size=48", "data.eval_size=16",
        "track_batch=4", "log_every=1", "checkpoint_every=3", "progress=false", "precision=fp32",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_metrics(out / "metrics.jsonl")
    start = next(r for r in records if r["kind"] == "start")
    assert start["world_size"] == 2
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]  # rank 0 alone writes: one record per step
    assert all(r["global_batch"] == 12 for r in train)  # images summed over ranks = 2 x 6 per rank
    ddp = next(r for r in records if r["kind"] == "ddp")
    assert len(ddp["digests"]) == 2
    assert ddp["digests"][0] == ddp["digests"][1]
    assert ddp["per_rank_batch"] == 6
    assert (out / "model.safetensors").is_file()
    assert (out / "train_state.safetensors").is_file()
    assert not list(out.glob(".*tmp*"))  # no stray temporary files from the other rank
