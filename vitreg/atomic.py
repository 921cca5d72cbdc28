"""Atomic file writes: every JSON, YAML, NPZ, HTML, PNG and safetensors file vitreg writes goes through here.

A file is written to a temporary name in the same folder, flushed and fsynced, then renamed over the target (and
the folder fsynced): whenever the process dies, the target holds either the previous complete file or the new
one, never half of it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from vitreg.errors import OutputError


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def make_dirs(directory: str | Path) -> Path:
    """``mkdir -p``; OutputError naming the folder when it cannot be created (no permission, disk full)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create {directory}: {err.strerror or err}") from err
    return directory


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(f)`` on a temporary binary file beside ``path``, then rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        # disk full, no permission, I/O error: the previous file (if any) is untouched
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from err
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def copy_file(src: str | Path, path: str | Path) -> Path:
    """``src`` copied to ``path`` the same way (streamed, so a large weights file is never held in memory)."""
    with open(src, "rb") as source:
        return atomic_write(path, lambda f: shutil.copyfileobj(source, f, 1 << 20))


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def plain(o: Any) -> Any:
    """A numpy scalar or array, a Path, a tuple or a set as plain JSON data (TypeError for anything else)."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple | set):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def to_json_text(data: Any, indent: int | None = 2) -> str:
    return json.dumps(data, indent=indent, default=plain)


def write_json(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    return write_text(path, to_json_text(data, indent))


def write_yaml(path: str | Path, data: Any) -> Path:
    import yaml

    return write_text(path, yaml.safe_dump(data, sort_keys=False))


def write_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """A compressed ``.npz`` of plain arrays (readable with ``allow_pickle=False``)."""
    return atomic_write(path, lambda f: np.savez_compressed(f, **arrays))  # type: ignore[arg-type]  # numpy stubs


def write_png(path: str | Path, fig: Any, dpi: int = 100) -> Path:
    """A matplotlib figure as PNG: a re-render that fails half-way keeps the previous figure."""
    return atomic_write(path, lambda f: fig.savefig(f, dpi=dpi, format="png"))


def write_safetensors(path: str | Path, tensors: Mapping[str, Any], metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save

    return write_bytes(path, save(dict(tensors), metadata=metadata))
