"""Result dataclasses <-> JSON: one encoder and decoder for every file of a run directory.

``to_json`` turns a (nested) result dataclass into plain JSON data; ``from_json`` builds it back with the one typed
decoder (:class:`vitreg.typed.JsonReader`), checking every value against the field's annotation and naming the file
and key of the first one that does not fit. Unknown keys are ignored (a newer minor version may add some); a missing
key takes the field's default or is an error. A field can be stored under another JSON name with
``field(metadata={"json": "global"})`` (``global`` is a Python keyword).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from vitreg import typed
from vitreg.atomic import plain
from vitreg.errors import RunDirError
from vitreg.typed import json_name

T = TypeVar("T")

#: Version of the run-directory contract this vitreg writes and reads. Files without ``schema_version`` were written
#: before it was recorded, under the same layout: they read as version 1.
SCHEMA_VERSION = 1


def to_json(obj: Any) -> Any:
    """Plain JSON data (dicts, lists, str, int, float, bool, None) for a result dataclass or container of them."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {json_name(f): to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    if isinstance(obj, np.ndarray | np.generic | Path):
        return plain(obj)
    return obj


def from_json(cls: type[T], data: Any, source: str | Path) -> T:
    """``cls`` built from JSON ``data`` read from ``source`` (a file name for messages) by the one typed decoder
    (:mod:`vitreg.typed`); raises RunDirError naming the file and key."""
    return typed.from_json(cls, data, str(source), RunDirError)


def read_json(path: Path) -> Any:
    """JSON data of ``path``; RunDirError (naming it) when it is missing or malformed."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunDirError(f"{path} not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RunDirError(f"{path}: cannot be read ({err})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RunDirError(f"{path} is not valid JSON: {err}") from None


def check_schema(data: Any, source: str | Path) -> None:
    """Refuse a file written under a newer contract than this vitreg knows."""
    version = data.get("schema_version", 1) if isinstance(data, dict) else 1
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RunDirError(f"{source}: schema_version must be a positive integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise RunDirError(
            f"{source}: written with run-directory schema {version}; this vitreg reads up to {SCHEMA_VERSION} "
            "(upgrade vitreg to read it)"
        )
