"""Cached stages: a pipeline (reproduce, the lab) is a list of library calls, each writing its own directory, run
once and then taken from the cache until its settings change.

A stage is skipped when its directory holds a stamp (``.stage.json``) whose digest matches the stage's job config
and those of the stages it reads (a retrained model re-runs everything downstream). The digest is taken from the
config's dict, with paths inside the output folder written relative to it (a moved output folder stays cached). A
training stage that was interrupted resumes from its last checkpoint; any other unfinished or stale stage directory
is cleared and run again. Trainings can run side by side, each in its own ``python -m vitreg train --config FILE``
process on a saved config.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitreg import atomic
from vitreg.config import save_config, to_dict
from vitreg.errors import StageError
from vitreg.stamp import STAMP, read_json  # both also this module's API (lab and reproduce read them here)

PENDING = ".stage-pending.json"
SAVED_CONFIG = ".stage-config.yaml"  # the config a subprocess stage runs
CHECKPOINT = "train_state.safetensors"  # a training stage with this file resumes instead of starting over

Log = Callable[[str], None]


@dataclass
class Stage:
    name: str  # e.g. "train: seed 0, 4 registers"
    kind: str  # train / diagnose / probe / lost / flops
    directory: Path
    config: Any  # the job config dataclass: what the stage computes
    work: Callable[[bool], object]  # runs the stage in this process; the flag asks to resume
    outputs: tuple[str, ...] = ()  # files (relative to directory) that a finished stage must have
    upstream: list[Stage] = field(default_factory=list)
    root: Path | None = None  # the output folder: paths under it are digested relative to it
    command: str | None = None  # a vitreg command that runs ``config`` saved as YAML (side by side), e.g. "train"

    def digest(self) -> str:
        data = {
            "kind": self.kind,
            "config": _portable(to_dict(self.config), self.root),
            "upstream": [u.digest() for u in self.upstream],
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def is_done(self) -> bool:
        stamp = read_json(self.directory / STAMP)
        return (
            stamp is not None
            and stamp.get("digest") == self.digest()
            and all((self.directory / o).exists() for o in self.outputs)
        )


def _portable(data: Any, root: Path | None) -> Any:
    """``data`` with the output folder's path replaced by ``<out>`` in every string."""
    if root is None:
        return data
    if isinstance(data, dict):
        return {k: _portable(v, root) for k, v in data.items()}
    if isinstance(data, list):
        return [_portable(v, root) for v in data]
    return data.replace(str(root), "<out>") if isinstance(data, str) else data


def locked(log: Log) -> Log:
    """``log`` safe to call from the threads that run stages side by side (whole lines, never interleaved)."""
    lock = threading.Lock()

    def safe(msg: str) -> None:
        with lock:
            log(msg)

    return safe


def in_subprocess(stage: Stage, resume: bool) -> None:
    """Run ``stage`` as ``python -m vitreg COMMAND --config SAVED --out DIR`` (or ``--resume DIR``)."""
    if stage.command is None:
        raise StageError(f"stage '{stage.name}' cannot run in a subprocess (it has no command)")
    d = stage.directory
    if resume:
        argv = [stage.command, "--resume", str(d)]
    else:
        save_config(stage.config, d, SAVED_CONFIG)
        argv = [stage.command, "--config", str(d / SAVED_CONFIG), "--out", str(d)]
    rc = subprocess.call([sys.executable, "-m", "vitreg", *argv])
    if rc != 0:
        raise StageError(f"stage '{stage.name}' failed (exit status {rc}); what it wrote is in {d}")


def run_stage(
    stage: Stage,
    index: int,
    total: int,
    log: Log = print,
    subprocess_: bool = False,
    progress: bool = True,
    position: int = 0,
) -> dict:
    """Run one stage (or take it from the cache); returns its timing record. A training shows a progress bar
    (``position``: its line among trainings side by side)."""
    d = stage.directory
    head = f"[{index}/{total}] {stage.name}"
    digest = stage.digest()
    if stage.is_done():
        stamp = read_json(d / STAMP) or {}
        log(f"{head}: cached ({d})")
        return {"stage": stage.name, "kind": stage.kind, "cached": True, "seconds": stamp.get("seconds")}
    pending = read_json(d / PENDING)
    resume = pending is not None and pending.get("digest") == digest and (d / CHECKPOINT).is_file()
    if resume:
        log(f"{head}: resuming the interrupted run in {d}")
    else:
        if d.exists():
            shutil.rmtree(d)  # results of other settings or of a run that died half-way: never mixed in
        log(f"{head}: running ({d})")
    atomic.make_dirs(d)
    atomic.write_json(d / PENDING, {"digest": digest})
    t0 = time.perf_counter()
    with TrainingProgress([stage], enabled=progress and stage.kind == "train", position=position):
        if subprocess_:
            in_subprocess(stage, resume)
        else:
            stage.work(resume)
    seconds = time.perf_counter() - t0
    missing = [o for o in stage.outputs if not (d / o).exists()]
    if missing:
        raise StageError(f"stage '{stage.name}' finished without writing {', '.join(missing)} in {d}")
    atomic.write_json(d / STAMP, {"digest": digest, "seconds": round(seconds, 2)})
    (d / PENDING).unlink(missing_ok=True)
    log(f"{head}: done in {seconds:.0f} s")
    return {"stage": stage.name, "kind": stage.kind, "cached": False, "seconds": round(seconds, 2)}


def _last_train_record(directory: Path) -> dict | None:
    """The last ``train`` record of a running training's metrics.jsonl (read from its tail)."""
    path = directory / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 8192))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("kind") == "train":
            return rec
    return None


class TrainingProgress:
    """One tqdm bar per training running side by side in its own process (step, images/s, ETA), fed from the
    records each one appends to its metrics.jsonl, so a long stage is never a silent "running"."""

    def __init__(self, stages: list[Stage], every: float = 2.0, enabled: bool = True, position: int = 0):
        self.stages, self.every, self.enabled, self.position = stages, every, enabled, position
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.bars: list[Any] = []

    def __enter__(self) -> TrainingProgress:
        if self.enabled:
            from tqdm import tqdm

            self.bars = [
                tqdm(total=int(getattr(s.config, "steps", 0)) or None, desc=s.name, unit="step",
                     position=self.position + i, leave=True, file=sys.stderr, dynamic_ncols=True)
                for i, s in enumerate(self.stages)
            ]  # fmt: skip
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()
            self.update()
            for bar in self.bars:
                bar.close()

    def update(self) -> None:
        for stage, bar in zip(self.stages, self.bars, strict=True):
            rec = _last_train_record(stage.directory)
            if rec is None:
                continue
            step = int(rec.get("step", 0))
            if bar.n == 0 and bar.last_print_n == 0 and step:  # resumed: start the rate estimate here
                bar.reset(total=bar.total)
                bar.n = bar.last_print_n = bar.initial = step
            bar.update(max(0, step - bar.n))
            bar.set_postfix(img_s=f"{float(rec.get('images_per_s', 0)):.0f}", loss=f"{float(rec.get('loss', 0)):.3f}")

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.update()


def run_stages(stages: list[Stage], jobs: int = 1, log: Log = print, progress: bool = True) -> list[dict]:
    """Every stage in order, numbered for the progress lines; with ``jobs`` > 1 the stages that have a command
    (the trainings) run first, that many side by side, each in its own process. Returns the timing records in the
    stages' order."""
    total = len(stages)
    records: dict[int, dict] = {}
    parallel = [(i, s) for i, s in enumerate(stages, 1) if s.command is not None] if jobs > 1 else []
    if len(parallel) > 1:
        safe = locked(log)
        slot = {i: k for k, (i, _) in enumerate(parallel)}  # one progress line each
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            done = pool.map(lambda a: (a[0], run_stage(a[1], a[0], total, safe, True, progress, slot[a[0]])), parallel)
            records.update(done)
    for i, s in enumerate(stages, 1):
        if i not in records:
            records[i] = run_stage(s, i, total, log, progress=progress)
    return [records[i] for i in sorted(records)]


# ------------------------------------------------------------------------------------- stages of the usual jobs
#: Generator seed of the held-out scenes that pipelines evaluate on: never the training scenes (seed 0).
EVAL_SCENE_SEED = 101
TRAIN_OUTPUTS = ("model.json", "model.safetensors", "metrics.jsonl")


def evaluation_scenes(train_cfg: Any, seed: int = EVAL_SCENE_SEED) -> Any:
    """Scenes of the kind a training config's models learned, at their input size, from another generator seed."""
    import dataclasses

    from vitreg.train.runner import input_size

    return dataclasses.replace(train_cfg.data.scene, img_size=input_size(train_cfg), seed=seed)


def train_stage(name: str, cfg: Any, directory: Path, root: Path) -> Stage:
    """Train ``cfg`` (a TrainConfig with one registers value) into ``directory``; resumable; side by side as
    ``vitreg train --config FILE``."""

    def work(resume: bool) -> object:
        from vitreg.train import runner

        return runner.resume(directory) if resume else runner.train(cfg, directory)

    return Stage(
        name=name,
        kind="train",
        directory=directory,
        config=cfg,
        work=work,
        outputs=TRAIN_OUTPUTS,
        root=root,
        command="train",
    )


@dataclass
class ZooModel:
    """A stage config that takes a trained model from the package's zoo: its name and weights hash (so another
    entry, or a changed one, is another stage and re-runs everything downstream)."""

    entry: str
    sha256: str
    train_digest: str


def zoo_stage(name: str, entry: Any, directory: Path, root: Path) -> Stage:
    """Copy zoo ``entry`` (a :class:`vitreg.models.load.zoo.ZooEntry`) into ``directory``, its weights hash checked:
    a training stage's outputs without the training."""

    def work(resume: bool) -> object:
        from vitreg.models.load.zoo import ENTRY_FILES

        entry.verify()
        for f in ENTRY_FILES:
            atomic.copy_file(entry.directory / f, directory / f)
        return entry

    p = entry.provenance
    cfg = ZooModel(entry=entry.name, sha256=str(p.get("sha256")), train_digest=str(p.get("train_digest")))
    return Stage(name=name, kind="zoo", directory=directory, config=cfg, work=work, outputs=TRAIN_OUTPUTS, root=root)


def diagnose_stage(name: str, cfg: Any, models: list[Stage], root: Path, report: bool) -> Stage:
    """`diagnose` of ``cfg`` (a DiagnoseConfig over the ``models`` stages' directories), and its report."""

    def work(resume: bool) -> object:
        from vitreg.jobs.diagnose import diagnose
        from vitreg.report.html import write_report

        result = diagnose(cfg)
        if report:
            write_report(Path(cfg.out))
        return result

    outputs = ("metrics.json", "report.html") if report else ("metrics.json",)
    return Stage(
        name=name,
        kind="diagnose",
        directory=Path(cfg.out),
        config=cfg,
        work=work,
        outputs=outputs,
        upstream=models,
        root=root,
    )


def job_stage(
    name: str, kind: str, cfg: Any, job: Callable[[Any], object], output: str, upstream: list[Stage], root: Path
) -> Stage:
    """A stage that calls ``job(cfg)`` (probe, lost, flops), which writes ``output`` in ``cfg.out``."""
    return Stage(
        name=name,
        kind=kind,
        directory=Path(cfg.out),
        config=cfg,
        work=lambda resume: job(cfg),
        outputs=(output,),
        upstream=upstream,
        root=root,
    )
