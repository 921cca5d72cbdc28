"""The stages of `vitreg reproduce`, each one ordinary vitreg command with its own run directory, and their cache.

A stage is skipped when its directory holds a stamp (``.stage.json``) whose digest matches the stage's settings and
those of the stages it reads (a retrained model re-runs everything downstream). A training stage that was interrupted
resumes from its last checkpoint; any other unfinished or stale stage directory is cleared and run again.
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

from vitreg.reproduce.plan import FLOPS_REGISTERS, Plan

STAMP = ".stage.json"
PENDING = ".stage-pending.json"
LOST_FEATURES = "v"  # the paper's choice for supervised (DeiT-III) models; keys are used for DINOv2


class StageError(RuntimeError):
    """A stage's command failed; its directory keeps what it wrote."""


@dataclass
class Stage:
    name: str  # e.g. "train seed 0, 4 registers"
    kind: str  # train / diagnose / probe / lost / flops
    directory: Path
    argv: list[str]  # a vitreg command line
    key: dict[str, Any] = field(default_factory=dict)  # extra settings that must invalidate the cache
    upstream: list[Stage] = field(default_factory=list)
    outputs: tuple[str, ...] = ()  # files (relative to directory) that a finished stage must have
    resume_argv: list[str] | None = None  # how to continue an interrupted run of the same settings
    root: Path | None = None  # the output folder: paths under it are digested relative to it

    def digest(self) -> str:
        data = {
            "argv": [_portable(a, self.root) for a in self.argv],
            "key": self.key,
            "upstream": [u.digest() for u in self.upstream],
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def is_done(self) -> bool:
        stamp = _read_json(self.directory / STAMP)
        return (
            stamp is not None
            and stamp.get("digest") == self.digest()
            and all((self.directory / o).exists() for o in self.outputs)
        )


def _portable(arg: str, root: Path | None) -> str:
    """Paths inside the output folder are digested relative to it, so a moved output folder stays cached."""
    return arg if root is None else arg.replace(str(root), "<out>")


def locked(log):
    """``log`` safe to call from the threads that run stages side by side (whole lines, never interleaved)."""
    lock = threading.Lock()

    def safe(msg: str) -> None:
        with lock:
            log(msg)

    return safe


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def run_stage(stage: Stage, index: int, total: int, runner: Callable[[list[str]], int], log=print) -> dict:
    """Run one stage (or take it from the cache); returns its timing record for results.json."""
    d = stage.directory
    head = f"[{index}/{total}] {stage.name}"
    digest = stage.digest()
    if stage.is_done():
        stamp = _read_json(d / STAMP) or {}
        log(f"{head}: cached ({d})")
        return {"stage": stage.name, "kind": stage.kind, "cached": True, "seconds": stamp.get("seconds")}
    pending = _read_json(d / PENDING)
    argv = stage.argv
    if (
        pending is not None
        and pending.get("digest") == digest
        and stage.resume_argv is not None
        and (d / "train_state.safetensors").is_file()
    ):
        argv = stage.resume_argv
        log(f"{head}: resuming the interrupted run in {d}")
    else:
        if d.exists():
            shutil.rmtree(d)  # results of other settings or of a run that died half-way: never mixed in
        log(f"{head}: running ({d})")
    d.mkdir(parents=True, exist_ok=True)
    _write_json(d / PENDING, {"digest": digest, "argv": stage.argv})
    t0 = time.perf_counter()
    rc = runner(argv)
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise StageError(f"stage '{stage.name}' failed (exit status {rc}); what it wrote is in {d}")
    missing = [o for o in stage.outputs if not (d / o).exists()]
    if missing:
        raise StageError(f"stage '{stage.name}' finished without writing {', '.join(missing)} in {d}")
    _write_json(d / STAMP, {"digest": digest, "argv": stage.argv, "seconds": round(seconds, 2)})
    (d / PENDING).unlink(missing_ok=True)
    log(f"{head}: done in {seconds:.0f} s")
    return {"stage": stage.name, "kind": stage.kind, "cached": False, "seconds": round(seconds, 2)}


def subprocess_runner(argv: list[str]) -> int:
    """One vitreg command in a fresh interpreter (what lets trainings run side by side)."""
    return subprocess.call([sys.executable, "-m", "vitreg", *argv])


def run_side_by_side(
    indexed: list[tuple[int, Stage]], total: int, jobs: int, runner: Callable[[list[str]], int], log=print
) -> dict[int, dict]:
    """Stages (numbered for the progress lines) ``jobs`` at a time, each in its own process when jobs > 1;
    one after the other through ``runner`` otherwise. Returns {number: timing record}."""
    if jobs > 1 and len(indexed) > 1:
        safe = locked(log)
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            return dict(pool.map(lambda a: (a[0], run_stage(a[1], a[0], total, subprocess_runner, log=safe)), indexed))
    return {i: run_stage(s, i, total, runner, log=log) for i, s in indexed}


def scene_options(train_cfg, img_size: tuple[int, int], seed: int) -> str:
    """``key=value,...`` for generated evaluation scenes of the kind the models learned, from another seed."""
    d = train_cfg.data
    opts = {
        "task": d.task,
        "background": d.background,
        "min_objects": d.min_objects,
        "max_objects": d.max_objects,
        "min_size": d.min_size,
        "max_size": d.max_size,
        "img_size": f"{img_size[0]}x{img_size[1]}",
        "seed": seed,
    }
    if d.shapes:
        opts["shapes"] = "+".join(d.shapes)
    if d.colors:
        opts["colors"] = "+".join(d.colors)
    return ",".join(f"{k}={v}" for k, v in opts.items())


def train_stage(name: str, d: Path, root: Path, config: str, overrides: list[str]) -> Stage:
    """`vitreg train --config CONFIG OVERRIDES --out D`, resumable; editing the config file invalidates it."""
    return Stage(
        name=name,
        kind="train",
        directory=d,
        root=root,
        argv=["train", "--config", config, *overrides, "--out", str(d)],
        key={"config_text": _config_text(config)},
        outputs=("model.json", "model.safetensors", "metrics.jsonl"),
        resume_argv=["train", "--resume", str(d)],
    )


def diagnose_stage(
    name: str, d: Path, root: Path, models: list[Stage], scenes: str, limit: int, extra: list[str], report: bool
) -> Stage:
    """`vitreg diagnose --sweep MODELS` on ``limit`` generated scenes (``scenes``: scene options)."""
    argv = ["diagnose", "--sweep", *(str(m.directory) for m in models), "--images", f"synthetic:{scenes},n={limit}",
            "--limit", str(limit), *extra, *([] if report else ["--no-report"]), "--out", str(d)]  # fmt: skip
    outputs = ("metrics.json", "report.html") if report else ("metrics.json",)
    return Stage(name=name, kind="diagnose", directory=d, root=root, argv=argv, upstream=models, outputs=outputs)


def model_dir(out: Path, seed: int, registers: int) -> Path:
    return out / "train" / f"seed{seed}" / f"reg{registers}"


def build_stages(plan: Plan, out: Path, train_cfg, img_size: tuple[int, int]) -> list[Stage]:
    """Every stage of ``plan`` in the order they run. ``train_cfg``: the resolved training config (for the scenes)."""
    out = Path(out)
    threads = ["--threads", str(plan.threads)] if plan.threads else []
    scenes = scene_options(train_cfg, img_size, plan.scene_seed)
    stages: list[Stage] = []
    trained: dict[tuple[int, int], Stage] = {}
    for seed in plan.seeds:
        for n in plan.registers:
            d = model_dir(out, seed, n)
            s = train_stage(f"train: seed {seed}, {n} registers", d, out, plan.config, plan.train_overrides(seed, n))
            trained[(seed, n)] = s
            stages.append(s)
    for seed in plan.seeds:
        models = [trained[(seed, n)] for n in plan.registers]
        d = out / "diagnose" / f"seed{seed}"
        name = f"diagnose: seed {seed}, registers {', '.join(map(str, plan.registers))}"
        extra = ["--examples", str(plan.examples), *threads]
        stages.append(diagnose_stage(name, d, out, models, scenes, plan.diagnose_limit, extra, report=True))
    for seed in plan.seeds:
        for n in plan.registers:
            m = trained[(seed, n)]
            d = out / "probe" / f"seed{seed}" / f"reg{n}"
            stages.append(
                Stage(
                    name=f"probe: seed {seed}, {n} registers",
                    kind="probe",
                    directory=d,
                    root=out,
                    argv=[
                        "probe",
                        "--model",
                        str(m.directory),
                        "--images",
                        f"synthetic:{scenes},n={plan.probe_limit}",
                        "--limit",
                        str(plan.probe_limit),
                        "--epochs",
                        str(plan.probe_epochs),
                        "--seeds",
                        str(plan.probe_seeds),
                        *threads,
                        "--out",
                        str(d),
                    ],
                    upstream=[m],
                    outputs=("probe.json",),
                )
            )
    lost_sets = [("synthetic", f"synthetic:{scenes}", ["--limit", str(plan.lost_limit)])]
    if plan.coco:
        limit = ["--limit", str(plan.coco_limit)] if plan.coco_limit else []
        lost_sets.append(("coco", plan.coco, [*limit, "--resize", str(plan.coco_resize)]))
    for name, dataset, extra in lost_sets:
        for seed in plan.seeds:
            for n in plan.registers:
                m = trained[(seed, n)]
                d = out / "lost" / name / f"seed{seed}" / f"reg{n}"
                stages.append(
                    Stage(
                        name=f"LOST on {name}: seed {seed}, {n} registers",
                        kind="lost",
                        directory=d,
                        root=out,
                        argv=[
                            "lost",
                            "--model",
                            str(m.directory),
                            "--dataset",
                            dataset,
                            *extra,
                            "--features",
                            LOST_FEATURES,
                            "--seed",
                            str(plan.scene_seed),
                            *threads,
                            "--out",
                            str(d),
                        ],
                        upstream=[m],
                        outputs=("lost.json",),
                    )
                )
    first = trained[(plan.seeds[0], plan.registers[0])]
    d = out / "flops"
    stages.append(
        Stage(
            name="FLOPs and parameters",
            kind="flops",
            directory=d,
            root=out,
            argv=[
                "flops",
                "--model",
                ",".join([str(first.directory), *plan.flops_models]),
                "--register-counts",
                ",".join(map(str, FLOPS_REGISTERS)),
                "--out",
                str(d),
            ],
            upstream=[first],
            outputs=("flops.json",),
        )
    )
    return stages


def _config_text(config: str) -> str:
    """The config's YAML text: editing the preset file invalidates the trained models."""
    from vitreg.train.config import resolve_config_path

    path = resolve_config_path(config)
    try:
        return Path(path).read_text() if path else ""
    except OSError:
        return ""
