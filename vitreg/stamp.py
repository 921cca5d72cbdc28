"""The stamp a finished pipeline stage leaves in its directory (``.stage.json``: the digest of its settings and the
seconds it ran), written by :mod:`vitreg.stages`. In a module of its own, below the training code: putting a
staged training run into the zoo (:mod:`vitreg.train.publish`) reads how long it ran, and must not import the pipeline
machinery that runs trainings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STAMP = ".stage.json"


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when it is missing, unreadable or not an object (a stage then runs again)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def stage_seconds(directory: Path) -> float | None:
    """The seconds the last run of the stage in ``directory`` took (None: not a finished stage)."""
    seconds = (read_json(directory / STAMP) or {}).get("seconds")
    return float(seconds) if isinstance(seconds, int | float) else None
