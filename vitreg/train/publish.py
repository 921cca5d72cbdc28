"""Publish a finished run into the package's model zoo (:mod:`vitreg.models.load.zoo` reads it): a training as fp16
weights, its log and config, and a provenance record with every number measured here (nothing typed in); a finished
distillation (registers distilled into a released model) as its delta to the base, never a full copy."""

from __future__ import annotations

import datetime as _dt
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch

from vitreg import atomic
from vitreg._version import __version__
from vitreg.config import load_config, to_dict
from vitreg.device import cpu_description
from vitreg.errors import ConfigError, RunDirError
from vitreg.models.load import zoo
from vitreg.models.load.checkpoints import load_model
from vitreg.models.presets import config_of
from vitreg.results.train import read_training_log
from vitreg.stamp import stage_seconds
from vitreg.train.augment import AugmentConfig, prepare_eval
from vitreg.train.config import TrainConfig
from vitreg.train.data import _rendered, scene_config
from vitreg.train.tracking import evaluate


def source_commit() -> str:
    """The git commit of the source tree vitreg runs from ("unknown" outside a checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
                             timeout=10, check=False)  # fmt: skip
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def _held_out_top1(model: torch.nn.Module, cfg: TrainConfig) -> float:
    """Top-1 on the run's held-out scenes (the ones its eval records use), fp32 arithmetic."""
    arch = config_of(model)  # its size, mean and std (build_model puts the same into timm's pretrained_cfg)
    images, labels = _rendered(scene_config(cfg.data, arch.img_size), cfg.data.eval_size, cfg.data.eval_start)
    aug = AugmentConfig(mean=arch.mean, std=arch.std)
    return evaluate(model, images, labels, lambda u: prepare_eval(u, aug), torch.device("cpu"), None)["top1"]


def _training(run_dir: Path) -> dict[str, Any]:
    """Steps, minutes inside updates, starts and the final top-1, from the run's metrics.jsonl."""
    log = read_training_log(run_dir)
    trains = [r for r in log.other if r.get("kind") == "train"]
    starts = [r for r in log.other if r.get("kind") == "start"]
    finals = [r for r in log.other if r.get("kind") == "final"]
    if not finals or not log.evals:
        raise RunDirError(f"{run_dir} is not a finished training run (no final record or evaluation)")
    seconds, prev = 0.0, 0
    for r in trains:  # each record covers the updates since the previous one, at its images/s
        steps = int(r["step"]) - prev
        if steps > 0 and r.get("images_per_s"):
            seconds += steps * int(r.get("global_batch", 0)) / float(r["images_per_s"])
        prev = int(r["step"])
    return {
        "steps": int(finals[-1]["step"]),
        "top1": log.evals[-1].top1,
        "update_minutes": round(seconds / 60, 2),
        "starts": len(starts),
        "precision": starts[0].get("dtype") if starts else None,
        "threads": starts[0].get("threads") if starts else None,
        "cpu": next((r["cpu"] for r in starts if r.get("cpu")), None),  # older start records lack it
    }


def add_to_zoo(
    run_dir: str | Path,
    name: str,
    command: str,
    commit: str | None = None,
    root: Path | None = None,
    limit_bytes: int | None = zoo.MAX_ZOO_BYTES,
) -> zoo.ZooEntry:
    """Store the finished run ``run_dir`` as zoo entry ``name`` in ``root`` (default: the package's zoo);
    ``command`` is the exact command that trained it. ``limit_bytes``: what every entry of ``root`` may take
    together (None: no limit), checked after writing (the entry is removed again when over)."""
    run_dir = Path(run_dir)
    root = zoo.ZOO_ROOT if root is None else Path(root)
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"a zoo entry name is a plain folder name, got {name!r}")
    cfg = load_config(TrainConfig, run_dir / "config.yaml")
    info = _training(run_dir)
    model = load_model(run_dir).eval()
    dest = root / name
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    half = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    atomic.write_safetensors(tmp / zoo.WEIGHTS, half, metadata={"format": "pt", "dtype": "float16"})
    for f in zoo.ENTRY_FILES:
        if f not in (zoo.WEIGHTS, zoo.PROVENANCE):  # written here: the fp16 weights above, the provenance below
            atomic.copy_file(run_dir / f, tmp / f)
    wall = stage_seconds(run_dir)  # the last (possibly resumed) stage run, when staged
    provenance = {
        "name": name,
        "spec": zoo.ZOO_PREFIX + name,
        "train_digest": zoo.train_digest(to_dict(cfg)),
        "config": to_dict(cfg),
        "command": command,
        "commit": commit or source_commit(),
        "vitreg_version": __version__,
        "registers": cfg.registers[0],
        "seed": cfg.seed,
        **{k: info[k] for k in ("steps", "precision", "threads", "starts", "update_minutes")},
        "last_stage_wall_minutes": round(wall / 60, 2) if wall else None,
        "cpu": info["cpu"] or {**cpu_description(), "note": "read when the entry was made, on the training machine"},
        "top1": info["top1"],
        "top1_fp16": _held_out_top1(load_model(tmp).eval(), cfg),
        "held_out_images": cfg.data.eval_size,
        "weights_dtype": "float16",
        "sha256": zoo.sha256_file(tmp / zoo.WEIGHTS),
        "bytes": (tmp / zoo.WEIGHTS).stat().st_size,
        "created": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    atomic.write_json(tmp / zoo.PROVENANCE, provenance)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    total = zoo.zoo_bytes(root)
    if limit_bytes is not None and total > limit_bytes:
        shutil.rmtree(dest)
        raise ConfigError(f"{root} would hold {total / 2**20:.1f} MiB, over its {limit_bytes / 2**20:.0f} MiB")
    return zoo.get(name, root)


#: what a delta entry holds beside its provenance
DELTA_FILES = ("delta.json", "delta.safetensors", "distill.json", "metrics.jsonl", "config.yaml")


def add_distilled_to_zoo(
    run_dir: str | Path,
    name: str,
    command: str,
    commit: str | None = None,
    root: Path | None = None,
    limit_bytes: int | None = zoo.MAX_ZOO_BYTES,
) -> zoo.ZooEntry:
    """Store the finished distillation ``run_dir`` as zoo entry ``name`` (a delta to its base: ``--model zoo:NAME``
    loads the base, checks its sha256 and applies the delta); ``command`` is the exact command that made it."""
    import yaml

    from vitreg.models.load.delta import DELTA_CONFIG, DELTA_WEIGHTS, read_delta
    from vitreg.results.distill import DistillResult
    from vitreg.results.rundir import has_result, read_result

    run_dir = Path(run_dir)
    root = zoo.ZOO_ROOT if root is None else Path(root)
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"a zoo entry name is a plain folder name, got {name!r}")
    if not has_result(run_dir, DistillResult) or not (run_dir / DELTA_CONFIG).is_file():
        raise RunDirError(f"{run_dir} is not a finished distillation (no distill.json or delta.json)")
    result = read_result(run_dir, DistillResult)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())  # the run's DistillConfig, as it saved it
    delta = read_delta(run_dir)
    dest, tmp = root / name, root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in DELTA_FILES:
        atomic.copy_file(run_dir / f, tmp / f)
    c = result.cost
    h = result.held_out
    provenance = {
        "name": name,
        "spec": zoo.ZOO_PREFIX + name,
        "kind": "delta",
        "weights_file": DELTA_WEIGHTS,
        "model": f"{result.registers} registers distilled into {delta.base.spec} (post hoc, by self-distillation)",
        "base": {"spec": delta.base.spec, "sha256": delta.base.sha256},
        "registers": result.registers,
        "config": cfg,
        "command": command,
        "commit": commit or source_commit(),
        "vitreg_version": __version__,
        "teacher": result.teacher,
        "unlock": result.unlock,
        "trained_parameters": result.trained_parameters,
        "top_k": result.top_k,
        "steps": result.steps,
        "images": result.images,
        "images_source": result.source,
        "preprocessing": result.preprocessing,
        "device": c.device if c else None,
        "precision": c.dtype if c else None,
        "cpu": c.cpu if c else None,
        "teacher_minutes": round(c.teacher_seconds / 60, 2) if c else None,
        "train_minutes": round(c.train_seconds / 60, 2) if c else None,
        "held_out": None
        if h is None
        else {
            "source": h.source,
            "images": h.images,
            "outliers_last_block": [h.original.outlier_share, h.distilled.outlier_share],
            "outliers_worst_block": [h.original.worst_share, h.distilled.worst_share],
            "cls_cosine": h.distilled.cls_cosine,
            "register_norm": h.distilled.register_norm,
        },
        "weights_dtype": "float16 (deltas to the base, and the registers)",
        "sha256": zoo.sha256_file(tmp / DELTA_WEIGHTS),
        "bytes": (tmp / DELTA_WEIGHTS).stat().st_size,
        "created": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    atomic.write_json(tmp / zoo.PROVENANCE, provenance)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    total = zoo.zoo_bytes(root)
    if limit_bytes is not None and total > limit_bytes:
        shutil.rmtree(dest)
        raise ConfigError(f"{root} would hold {total / 2**20:.1f} MiB, over its {limit_bytes / 2**20:.0f} MiB")
    return zoo.get(name, root)
