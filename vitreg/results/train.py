"""What a training run directory holds for readers: the records of ``metrics.jsonl`` (one JSON object per line, each
with a ``kind`` and the ``step``) that later stages use, and the summary drawn from them.

Only ``eval`` and ``track`` records are typed here; ``start``, ``train``, ``final``, ``error`` and ``ddp`` records
are read as plain dicts. A last line cut short by a crash is ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitreg.errors import RunDirError
from vitreg.results.codec import from_json

METRICS_NAME = "metrics.jsonl"


@dataclass(kw_only=True)
class TrackLayer:
    """Patch-token norms of one block output on the fixed tracking batch (before the final norm)."""

    layer: int
    p50: float | None = None
    p90: float | None = None
    p98: float | None = None
    p99: float | None = None
    max: float | None = None
    threshold: float | None = None
    bimodal: bool | None = None
    outlier_ratio: float | None = None  # auto rule
    cls_norm: float | None = None
    register_norms: list[float] = field(default_factory=list)


@dataclass(kw_only=True)
class TrackRecord:
    step: int
    images: int = 0
    rule: str = "auto"
    layers: list[TrackLayer] = field(default_factory=list)


@dataclass(kw_only=True)
class EvalRecord:
    step: int
    top1: float
    ce: float | None = None
    images: int = 0


@dataclass(kw_only=True)
class TrainingLog:
    evals: list[EvalRecord] = field(default_factory=list)
    tracks: list[TrackRecord] = field(default_factory=list)
    other: list[dict[str, Any]] = field(default_factory=list)


def read_training_log(directory: Path) -> TrainingLog:
    """The records of ``directory/metrics.jsonl``; RunDirError when the file is missing."""
    path = Path(directory) / METRICS_NAME
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise RunDirError(f"{path}: cannot read the training metrics ({err.strerror or err})") from None
    log = TrainingLog()
    for i, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if not isinstance(rec, dict):
            continue
        where = f"{path} line {i}"
        if rec.get("kind") == "eval":
            log.evals.append(from_json(EvalRecord, _without_kind(rec), where))
        elif rec.get("kind") == "track":
            log.tracks.append(from_json(TrackRecord, _without_kind(rec), where))
        else:
            log.other.append(rec)
    return log


def _without_kind(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if k != "kind"}


@dataclass(kw_only=True)
class TrackPoint:
    """The output layer at one tracked step (Fig. 4b)."""

    step: int
    p50: float | None
    p99: float | None
    max: float | None
    outlier_ratio: float | None
    bimodal: bool | None


@dataclass(kw_only=True)
class TrainingSummary:
    """Final held-out top-1 and the output-layer norms along training, from a run's metrics.jsonl."""

    top1: float | None
    steps: int | None
    tracking: list[TrackPoint]
    emergence_step: int | None  # first tracked step from which the output layer always has outliers
    emergence_fraction: float | None  # emergence_step / steps

    @classmethod
    def of(cls, log: TrainingLog) -> TrainingSummary:
        tracks = [
            TrackPoint(step=t.step, p50=o.p50, p99=o.p99, max=o.max, outlier_ratio=o.outlier_ratio, bimodal=o.bimodal)
            for t in log.tracks
            if t.layers
            for o in [t.layers[-1]]
        ]
        steps = tracks[-1].step if tracks else None
        emerged = next(
            (
                t.step
                for i, t in enumerate(tracks)
                if t.step > 0 and all((u.outlier_ratio or 0) > 0 for u in tracks[i:])
            ),
            None,
        )
        return cls(
            top1=log.evals[-1].top1 if log.evals else None,
            steps=steps,
            tracking=tracks,
            emergence_step=emerged,
            emergence_fraction=emerged / steps if emerged is not None and steps else None,
        )
