"""Put a finished distillation into the package's model zoo: its delta to the base (already fp16), its training log
and config, and a provenance record with every number measured here (nothing typed in): the command and commit, the
CPU or GPU, minutes, the images it was distilled on, the held-out figures, and the delta's sha256."""

from __future__ import annotations

import datetime as _dt
import shutil
from pathlib import Path

from vitreg import atomic
from vitreg._version import __version__
from vitreg.errors import ConfigError, RunDirError
from vitreg.models import zoo
from vitreg.models.delta import DELTA_CONFIG, DELTA_WEIGHTS, read_delta
from vitreg.results.distill import DistillResult
from vitreg.results.rundir import has_result, read_result

#: what a delta entry holds beside its provenance
DELTA_FILES = (DELTA_CONFIG, DELTA_WEIGHTS, "distill.json", "metrics.jsonl", "config.yaml")


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

    from vitreg.train.zoo import source_commit

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
