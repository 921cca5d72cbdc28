"""Concurrent runs: two processes aimed at one --out do not both write it. The second refuses in one line naming
the holder; a holder killed with SIGKILL leaves nothing stuck."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vitreg.cli import main
from vitreg.errors import RunLockedError
from vitreg.runlock import LOCK_NAME, run_lock
from vitreg.train import run_training
from vitreg.train.tracking import read_metrics

REPO = Path(__file__).resolve().parents[1]
TINY = ["model=vit_pico_patch4_32", "precision=fp32", "progress=false", "batch_size=8", "data.train_size=32"]
TINY += ["data.eval_size=16", "track_batch=4", "warmup_steps=1", "threads=1", "log_every=1"]

HOLD = """
import sys, time
from vitreg.runlock import run_lock
with run_lock(sys.argv[1], "train"):
    print("holding", flush=True)
    time.sleep(120)
"""


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture
def holder(tmp_path):
    """A live process holding tmp_path/run (as a training run would), killed with SIGKILL at the end."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], env=_env(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    yield run, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_second_train_refuses_naming_the_holder(holder, capsys):
    run, proc = holder
    info = json.loads((run / LOCK_NAME).read_text())
    assert info["pid"] == proc.pid
    assert info["host"] == socket.gethostname()
    assert main(["train", "--out", str(run), *TINY, "steps=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"pid {proc.pid} on {socket.gethostname()}" in err
    assert "in use by vitreg train" in err
    assert info["started"] in err
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # the refused run wrote nothing


def test_resume_and_diagnose_take_the_lock_too(holder, capsys):
    run, proc = holder
    (run / "config.yaml").write_text("steps: 2\n")
    assert main(["train", "--resume", str(run)]) == 2
    assert f"pid {proc.pid}" in capsys.readouterr().err
    argv = ["diagnose", "--model", "vit_pico_patch4_32", "--random-init", "--images", "synthetic", "--limit", "2"]
    assert main([*argv, "--no-report", "--out", str(run)]) == 2
    assert f"pid {proc.pid}" in capsys.readouterr().err
    assert not (run / "metrics.json").exists()


def test_sigkilled_holder_leaves_nothing_stuck(holder, tmp_path):
    run, proc = holder
    with pytest.raises(RunLockedError), run_lock(run, "train"):
        pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run / LOCK_NAME).exists()  # the dead holder's file is still there, but its lock went with it
    run_training(None, [*TINY, "steps=2"], out=run)
    assert [r["kind"] for r in read_metrics(run / "metrics.jsonl")].count("start") == 1
    assert not (run / LOCK_NAME).exists()  # released and removed when the run ended


def test_lock_is_reentrant_in_one_process_and_released(tmp_path):
    with run_lock(tmp_path, "diagnose") as path, run_lock(tmp_path, "diagnose"):
        assert path is not None
        assert path.is_file()
    assert not (tmp_path / LOCK_NAME).exists()
    with run_lock(tmp_path, "diagnose"):  # taken again after release
        pass


def test_two_train_processes_on_one_out(tmp_path):
    """Both started at once: one trains, the other refuses naming it; the run directory holds one run."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "vitreg.cli", "train", "--out", str(run), *TINY, "steps=150"]
    procs = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)]
    procs.append(subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    errs = [p.communicate(timeout=300)[1] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], errs
    winner = next(p for p in procs if p.returncode == 0)
    loser_err = errs[[p.returncode for p in procs].index(2)]
    assert f"in use by vitreg train (pid {winner.pid} on {socket.gethostname()}" in loser_err
    records = read_metrics(run / "metrics.jsonl")
    assert [r["kind"] for r in records].count("start") == 1
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 151))


def test_a_refused_process_waits_for_the_holder_to_write_its_name(tmp_path):
    """Two processes started at once: the loser may look before the holder has written itself into the lock file
    (the holder writes right after it takes the lock); it waits for the name instead of reporting a nameless one."""
    import json
    import threading

    from vitreg.runlock import describe_holder

    path = tmp_path / ".vitreg.lock"
    path.write_text("")
    assert describe_holder(path, wait=0) == "another process (it has not written its name yet)"
    holder = dict(pid=4242, host="h", command="train", started="now")
    writer = threading.Timer(0.2, lambda: path.write_text(json.dumps(holder)))
    writer.start()
    assert describe_holder(path, wait=5).startswith("vitreg train (pid 4242 on h")
    writer.join()
