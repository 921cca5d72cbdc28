"""Disk faults: a write that fails with ENOSPC or EIO (injected at the write call) stops the run with one line naming
the file; what was on disk before stays loadable, and --resume (or a rerun) continues once the fault is gone."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vitreg import atomic
from vitreg.cli import main
from vitreg.errors import OutputError
from vitreg.results.diagnose import DiagnoseResult
from vitreg.results.rundir import read_result
from vitreg.train import run_training
from vitreg.train.checkpoint import STATE_NAME, read_train_state
from vitreg.train.tracking import read_metrics

TINY = ["model=vit_pico_patch4_32", "precision=fp32", "progress=false", "batch_size=8", "data.train_size=32"]
TINY += ["data.eval_size=16", "track_batch=4", "warmup_steps=1", "threads=1", "log_every=1", "steps=6"]
TINY += ["checkpoint_every=2", "track_every=3", "eval_every=3"]


def _fail_atomic(monkeypatch, name: str, code: int, nth: int = 1) -> dict[str, int]:
    """The ``nth`` atomic write of a file called ``name`` (and every later one) gets half its bytes onto the disk,
    then fails with ``code``, as a filling disk does."""
    real_open = open
    seen = {"calls": 0}

    class Failing:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            self._f.write(bytes(data)[: len(data) // 2])
            raise OSError(code, os.strerror(code))

        def __getattr__(self, attr):
            return getattr(self._f, attr)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def fake_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if Path(path).name.startswith(f".{name}.tmp"):
            seen["calls"] += 1
            if seen["calls"] >= nth:
                return Failing(f)
        return f

    monkeypatch.setattr(atomic, "open", fake_open, raising=False)
    return seen


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run every faulty run must end equal to."""
    out = tmp_path_factory.mktemp("faults") / "whole"
    run_training(None, TINY, out=out)
    return out


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob(".*.tmp*"))


def test_checkpoint_enospc_keeps_previous_checkpoint_and_resume_is_exact(tmp_path, reference, monkeypatch, capsys):
    out = tmp_path / "run"
    _fail_atomic(monkeypatch, STATE_NAME, errno.ENOSPC, nth=2)  # the checkpoint of step 4
    assert main(["train", "--out", str(out), *TINY]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert errors == [f"vitreg train: error: cannot write {out / STATE_NAME}: No space left on device"]
    assert read_train_state(out / STATE_NAME)[1]["step"] == 2  # the previous checkpoint, whole
    assert _leftovers(out) == []  # the half-written temporary file is gone
    assert not (out / "model.safetensors").exists()
    monkeypatch.undo()
    run_training(None, resume_dir=out)
    assert _same_weights(out, reference)
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_metrics_eio_stops_the_run_and_resume_replays_from_the_checkpoint(tmp_path, reference, monkeypatch):
    out = tmp_path / "run"
    real_write = os.write

    def failing_write(fd, data):
        if b'"kind": "train", "step": 5' in bytes(data):
            real_write(fd, bytes(data)[:10])  # a line cut short, as a failing disk leaves it
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(OutputError, match=r"cannot write .*metrics\.jsonl: Input/output error"):
        run_training(None, TINY, out=out)
    monkeypatch.undo()
    assert read_train_state(out / STATE_NAME)[1]["step"] == 4
    run_training(None, resume_dir=out)
    assert _same_weights(out, reference)
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert all(line.startswith("{") for line in (out / "metrics.jsonl").read_text().splitlines())


def test_final_model_write_fails_then_resume_writes_it(tmp_path, reference, monkeypatch, capsys):
    out = tmp_path / "run"
    _fail_atomic(monkeypatch, "model.safetensors", errno.ENOSPC)
    assert main(["train", "--out", str(out), *TINY]) == 2
    assert f"cannot write {out / 'model.safetensors'}: No space left on device" in capsys.readouterr().err
    assert read_train_state(out / STATE_NAME)[1]["step"] == 6
    assert not (out / "model.safetensors").exists()
    monkeypatch.undo()
    run_training(None, resume_dir=out)
    assert _same_weights(out, reference)


DIAGNOSE = ["diagnose", "--model", "vit_pico_patch4_32", "--random-init", "--images", "synthetic", "--limit", "4"]
DIAGNOSE += ["--examples", "1", "--batch-size", "4", "--threads", "1"]


@pytest.mark.parametrize("name", ["metrics.json", "arrays_a.npz"])
def test_diagnose_results_fault_keeps_the_previous_results(tmp_path, monkeypatch, capsys, name):
    out = tmp_path / "d"
    assert main([*DIAGNOSE, "--no-report", "--out", str(out)]) == 0
    before = read_result(out, DiagnoseResult)
    saved = (out / name).read_bytes()
    capsys.readouterr()
    _fail_atomic(monkeypatch, name, errno.ENOSPC)
    assert main([*DIAGNOSE, "--no-report", "--seed", "1", "--out", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # (after the progress bar)
    assert errors == [f"vitreg diagnose: error: cannot write {out / name}: No space left on device"]
    assert (out / name).read_bytes() == saved
    assert read_result(out, DiagnoseResult) == before
    assert _leftovers(out) == []
    monkeypatch.undo()
    assert main([*DIAGNOSE, "--no-report", "--seed", "1", "--out", str(out)]) == 0
    assert read_result(out, DiagnoseResult).config["runtime"]["seed"] == 1


def test_report_fault_keeps_the_previous_page(tmp_path, monkeypatch, capsys):
    out = tmp_path / "d"
    assert main([*DIAGNOSE, "--out", str(out)]) == 0
    page = (out / "report.html").read_bytes()
    capsys.readouterr()
    _fail_atomic(monkeypatch, "report.html", errno.EIO)
    assert main(["report", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]  # (not warnings)
    assert errors == [f"vitreg report: error: cannot write {out / 'report.html'}: Input/output error"]
    assert (out / "report.html").read_bytes() == page
    monkeypatch.undo()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")
