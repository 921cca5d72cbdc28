"""Soak: a 2,000-step `vitreg train` is SIGKILLed at a random step, then `vitreg train --resume` finishes it; the
final weights must be bitwise equal to those of the same run uninterrupted (CPU, fp32, one thread), and its
metrics.jsonl must hold every step once. Both runs are real `vitreg train` processes, run side by side in one
invocation. Exit status 1 when anything differs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = ["model=vit_pico_patch4_32", "precision=fp32", "progress=false", "batch_size=8", "data.train_size=64"]
TINY += ["data.eval_size=32", "track_batch=8", "warmup_steps=20", "threads=1", "log_every=1", "checkpoint_every=25"]


def _cpu() -> str:
    from vitreg.device import cpu_line  # here, so the parent process stays light until it prints

    return cpu_line()


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def _train(out: Path, steps: int, extra: list[str] | None = None) -> list[str]:
    base = [sys.executable, "-m", "vitreg.cli", "train"]
    every = [f"steps={steps}", f"track_every={max(steps // 4, 1)}", f"eval_every={max(steps // 2, 1)}"]
    return [*base, "--out", str(out), *TINY, *every] if extra is None else [*base, *extra]


def _last_step(metrics: Path) -> int:
    if not metrics.exists():
        return 0
    steps = [0]
    for line in metrics.read_text().splitlines()[:-1]:  # the last line may be cut short while written
        record = json.loads(line)
        if record.get("kind") == "train":
            steps.append(record["step"])
    return max(steps)


def _kill_at(out: Path, steps: int, at: int) -> int:
    """Start the run, SIGKILL it once its metrics reach step ``at``; returns the step it had reached."""
    proc = subprocess.Popen(_train(out, steps), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while proc.poll() is None and _last_step(out / "metrics.jsonl") < at:
            time.sleep(0.005)
        if proc.poll() is not None:
            raise SystemExit(f"the run ended before step {at}: {proc.stderr.read().decode()[-2000:]}")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    return _last_step(out / "metrics.jsonl")


def _compare(a: Path, b: Path) -> list[str]:
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    if wa.keys() != wb.keys():
        return ["the two models hold different tensors"]
    return [k for k in wa if not (wa[k].dtype == wb[k].dtype and wa[k].shape == wb[k].shape and (wa[k] == wb[k]).all())]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=None, help="picks the kill step (default: a fresh random one)")
    ap.add_argument("--quick", action="store_true", help="200 steps (smoke run, seconds)")
    args = ap.parse_args()
    if args.quick:
        args.steps = 200
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    at = random.Random(seed).randrange(1, args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        killed, whole = Path(tmp) / "killed", Path(tmp) / "whole"
        t0 = time.perf_counter()
        subprocess.run(_train(whole, args.steps), env=_env(), check=True, capture_output=True)
        t_whole = time.perf_counter() - t0
        reached = _kill_at(killed, args.steps, at)
        from vitreg.train.checkpoint import STATE_NAME, read_train_state

        saved = read_train_state(killed / STATE_NAME)[1]["step"] if (killed / STATE_NAME).exists() else 0
        t1 = time.perf_counter()
        subprocess.run(
            _train(killed, args.steps, ["--resume", str(killed)]), env=_env(), check=True, capture_output=True
        )
        t_resume = time.perf_counter() - t1
        differ = _compare(killed, whole)
        from vitreg.train.tracking import read_metrics

        steps = [r["step"] for r in read_metrics(killed / "metrics.jsonl") if r["kind"] == "train"]
    print(f"{_cpu()}; vit_pico_patch4_32, fp32, one thread, {args.steps} steps, batch 8, checkpoint every 25")
    print(f"kill step drawn with seed {seed}: {at}; SIGKILL sent at step {reached}, last checkpoint at step {saved}")
    print(f"uninterrupted run {t_whole:.1f} s; resume from step {saved} took {t_resume:.1f} s")
    same_log = steps == list(range(1, args.steps + 1))
    print(f"metrics.jsonl train records: {len(steps)}, every step once: {same_log}")
    print(
        f"final weights bitwise equal to the uninterrupted run: {not differ}"
        + (f" (differ: {differ[:5]})" if differ else "")
    )
    if differ or not same_log:
        sys.exit(1)


if __name__ == "__main__":
    main()
