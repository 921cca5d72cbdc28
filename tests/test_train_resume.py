"""Checkpoints and faults: NaN stops cleanly, resume is exact, a SIGKILLed run resumes to the same weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vitreg.cli import main
from vitreg.models import load_model
from vitreg.train import TrainingDiverged, run_training
from vitreg.train.checkpoint import STATE_NAME, read_train_state
from vitreg.train.tracking import read_metrics

TINY = [
    "model=vit_pico_patch4_32",
    "precision=fp32",
    "progress=false",
    "batch_size=16",
    "data.train_size=64",
    "data.eval_size=32",
    "track_batch=8",
    "warmup_steps=2",
    "threads=1",
]


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def _nan_at_step(monkeypatch, step: int) -> None:
    """Fault injection: the loss of update ``step`` (1-based) becomes NaN, in this process, however the run started."""
    from vitreg.train import loop

    current = {"step": 0}
    real_batch, real_loss = loop.make_batch, loop.build_loss

    def make_batch(*args, **kwargs):
        current["step"] = args[5] + 1  # make_batch(data, order, aug, mixup, seed, step, ...)
        return real_batch(*args, **kwargs)

    def build_loss(cfg):
        criterion = real_loss(cfg)
        return lambda logits, y: criterion(logits, y) * (float("nan") if current["step"] == step else 1.0)

    monkeypatch.setattr(loop, "make_batch", make_batch)
    monkeypatch.setattr(loop, "build_loss", build_loss)


def test_nan_stops_keeps_last_good_checkpoint_and_resume_is_exact(tmp_path, capsys, monkeypatch):
    common = [*TINY, "steps=6", "checkpoint_every=3", "log_every=1", "track_every=3", "eval_every=3"]
    broken, whole = tmp_path / "broken", tmp_path / "whole"
    _nan_at_step(monkeypatch, 5)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 5.*step 3\)"):
        run_training(None, common, out=broken)
    _, meta = read_train_state(broken / STATE_NAME)
    assert meta["step"] == 3  # the last good checkpoint, not overwritten by the failing step
    errors = [r for r in read_metrics(broken / "metrics.jsonl") if r["kind"] == "error"]
    assert errors
    assert errors[0]["step"] == 5
    assert errors[0]["loss"] == "nan"
    # the CLI says it in one line and exits 2
    assert main(["train", "--resume", str(broken)]) == 2
    assert "loss is nan at step 5" in capsys.readouterr().err

    monkeypatch.undo()  # the fault is gone: the run resumes and ends as if it had never happened
    run_training(None, common, out=whole)
    run_training(None, resume_dir=broken)
    _assert_same_weights(broken, whole)
    steps = [r["step"] for r in read_metrics(broken / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]  # records after the checkpoint were replayed, not duplicated
    assert load_model(broken).vitreg_config.num_classes == 8  # default task: colour of the largest object


def test_resume_of_finished_run_changes_nothing(tmp_path):
    out = tmp_path / "done"
    run_training(None, [*TINY, "steps=2", "checkpoint_every=1"], out=out)
    before = _weights(out)
    run_training(None, resume_dir=out)
    after = _weights(out)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_resume_refuses_missing_run(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "config.yaml" in capsys.readouterr().err


KILL_RUN = [*TINY, "steps=24", "batch_size=8", "checkpoint_every=3", "track_every=12", "eval_every=24", "log_every=1"]


# The child parks itself after step 8 (its step-6 checkpoint written, step 9's not) and says so in a file, so the
# kill lands at a known point however loaded the machine is: polling metrics raced a fast child to its end.
_PARKED_CHILD = """
import sys, time
from pathlib import Path
from vitreg.train import loop
real = loop._after_update
def park_after_eight(s, done, bar):
    real(s, done, bar)
    if done == 8:
        Path(sys.argv[1]).write_text("parked")
        time.sleep(3600)
loop._after_update = park_after_eight
from vitreg.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _train_cmd(out: Path, marker: Path) -> list[str]:
    return [sys.executable, "-c", _PARKED_CHILD, str(marker), "train", "--out", str(out), *KILL_RUN]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


@pytest.mark.slow
def test_sigkill_mid_run_resumes_to_same_weights(tmp_path):
    killed, whole, marker = tmp_path / "killed", tmp_path / "whole", tmp_path / "parked"
    proc = subprocess.Popen(_train_cmd(killed, marker), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600  # a guard against a child that never parks, not a timing assumption
    try:
        while time.time() < deadline and proc.poll() is None and not marker.exists():
            time.sleep(0.05)
        assert marker.exists(), "the run never reached step 8: " + (proc.stderr.read().decode() if proc.stderr else "")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert read_train_state(killed / STATE_NAME)[1]["step"] == 6  # the last checkpoint before the kill
    assert not (killed / "model.safetensors").exists()

    resume = [sys.executable, "-m", "vitreg.cli", "train", "--resume", str(killed)]
    subprocess.run(resume, env=_env(), check=True, capture_output=True)
    # the uninterrupted reference runs in this process (same ops, one thread): one interpreter start fewer
    run_training(None, KILL_RUN, out=whole)
    _assert_same_weights(killed, whole)
    assert read_train_state(killed / STATE_NAME)[1]["step"] == 24
