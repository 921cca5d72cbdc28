"""The checkpoint formats vitreg reads: a registry of one module per format (:class:`~.base.Format`), each stating
how it is recognised (a name prefix, a marker file, state-dict keys), how its files state the architecture and how
its weights map onto timm.

A format is accepted only when its files (or its name) determine the architecture: vitreg never guesses what the
weights do not say (the number of heads, the activation, the norm's epsilon). This module is the one place where a
name, a folder, a file or a state dict is matched to its format; everything downstream gets a
:class:`~.base.Resolved` (architecture, weights file, format, layout) and re-guesses nothing. The accepted-formats
message, ``--help`` and the README's table of formats are drawn from :data:`FORMATS`.

Adding a format is one module in this package that defines ``FORMAT`` (it is found here by its presence) and one
case of the parity test (``tests/test_models_parity.py``); ``python -m vitreg.models.load.formats`` prints the README
table. Light at import: no torch, no timm (``--help`` reads this registry).
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

from vitreg.errors import CheckpointError
from vitreg.models.load.formats.base import Format, Layout, Resolved, StateDict, read_json
from vitreg.models.load.formats.vitreg_dir import read_sidecar

__all__ = [
    "FORMATS",
    "Format",
    "Layout",
    "Resolved",
    "accepted",
    "folder_format",
    "layout_of",
    "name_format",
    "read_file",
    "read_folder",
    "read_name",
    "read_sidecar",
]


def _discover() -> list[Format]:
    """Every module of this package that declares a ``FORMAT`` (the others are helpers the formats share)."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        fmt = getattr(module, "FORMAT", None)
        if isinstance(fmt, Format):
            found.append(fmt)
    return sorted(found, key=lambda f: (f.order, f.key))


#: Every format, in the order they are tried.
FORMATS: list[Format] = _discover()


def by_key(key: str) -> Format:
    return next(f for f in FORMATS if f.key == key)


def accepted() -> str:
    """The accepted formats, in words, for error messages."""
    return "; ".join(f.accepted for f in FORMATS)


def prefixes() -> list[str]:
    return [f.prefix for f in FORMATS if f.prefix]


# -------------------------------------------------------------------------------------------------------- names
def name_format(spec: str) -> Format | None:
    """The format whose name prefix or names ``spec`` is (None: not a name any format claims)."""
    for f in FORMATS:
        if f.read_name is not None and (
            (f.prefix and spec.startswith(f.prefix)) or (f.claims_name is not None and f.claims_name(spec))
        ):
            return f
    return None


def read_name(fmt: Format, spec: str, registers: int | None, img_size: Any, overrides: dict[str, Any]) -> Resolved:
    """A named architecture (its weights are located by the resolver, or given with ``--weights``: their layout is
    read from their keys when they are loaded)."""
    assert fmt.read_name is not None
    cfg = fmt.read_name(spec, registers=registers, img_size=img_size, overrides=overrides)
    return Resolved(config=cfg, weights=None, format=fmt, layout=None)


# ------------------------------------------------------------------------------------------------------ folders
def folder_format(folder: Path) -> tuple[Format, dict[str, Any]]:
    """The format of a model folder, from its marker file alone (no weights read: an ``hf:`` repo is checked with
    this before its weights are fetched), and the marker's parsed content."""
    parsed: dict[str, dict[str, Any]] = {}
    for f in FORMATS:
        if not f.config_file or not (folder / f.config_file).is_file():
            continue
        if not f.parse_config:
            return f, {}
        if f.config_file not in parsed:
            parsed[f.config_file] = read_json(folder / f.config_file)
        data = parsed[f.config_file]
        if f.claims_config(data):
            return f, data
    if "config.json" in parsed:
        data = parsed["config.json"]
        what = f"model_type {data.get('model_type')!r}" if "model_type" in data else "no model_type nor architecture"
        raise CheckpointError(f"{folder / 'config.json'}: {what} is not one vitreg reads ({LIST_THEM})")
    raise CheckpointError(f"{folder}: not a model folder vitreg reads (no {' or '.join(_markers())}; {LIST_THEM})")


#: where a refusal points for the formats that load (the whole list is too long for a one-line message)
LIST_THEM = "`vitreg models --formats` lists every format that loads, with the model types it reads"


def _markers() -> list[str]:
    return list(dict.fromkeys(f.config_file for f in FORMATS if f.config_file))


def folder_config(folder: Path) -> tuple[Format, Any]:
    """The format of a folder and the architecture its config states (no weights read)."""
    fmt, data = folder_format(folder)
    assert fmt.read_config is not None
    return fmt, fmt.read_config(data, folder)


def read_folder(folder: Path) -> Resolved:
    """The architecture a model folder states, its weights file and its format."""
    fmt, cfg = folder_config(folder)
    weights = next((folder / n for n in fmt.weight_files if (folder / n).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{folder}: {fmt.config_file} without {' or '.join(fmt.weight_files)}")
    return Resolved(config=cfg, weights=weights, format=fmt, layout=fmt.layout)


# -------------------------------------------------------------------------------------------------------- files
def file_format(path: Path) -> Format | None:
    return next((f for f in FORMATS if f.claims_file is not None and f.claims_file(path)), None)


def read_file(path: Path) -> Resolved | None:
    """The architecture a file states (an ONNX export, a weights file with its sidecar); None for a bare weights
    file, which does not say its architecture."""
    fmt = file_format(path)
    if fmt is None:
        return None
    assert fmt.read_file is not None
    cfg, layout = fmt.read_file(path)
    return Resolved(config=cfg, weights=path, format=fmt, layout=layout)


# --------------------------------------------------------------------------------------------------- state dicts
def layout_of(sd: StateDict) -> Layout:
    """The layout of a state dict given with a named architecture, from its keys: the first format's that
    recognises it, else timm's own (which converts what timm knows, and otherwise reports what does not fit)."""
    from vitreg.models.load.formats.timm_folder import LAYOUT as TIMM

    for f in FORMATS:
        if f.layout is not None and f.layout is not TIMM and f.layout.recognise(sd):
            return f.layout
    return TIMM


# ---------------------------------------------------------------------------------------------------- the README
def owner_version(owner: str) -> str:
    """The installed version of the distribution that owns a format ("not installed" when it is not)."""
    from importlib.metadata import PackageNotFoundError, version

    if owner == "vitreg":
        from vitreg._version import __version__

        return f"vitreg {__version__}"
    if owner == "dinov2":
        return "the dinov2 repository (not a package: its forward written out in the test)"
    try:
        return f"{owner} {version(owner)}"
    except PackageNotFoundError:
        return f"{owner} (not installed)"


def readme_table() -> str:
    """The README's table of formats (``python -m vitreg.models.load.formats`` prints it; a test holds the README to
    it). The versions are the owning libraries' installed here, which the parity test ran against."""
    rows = [
        "| what you have | command | recognised by | position table at another `--img-size` | photos prepared "
        "(`--resize model`) | tested against |",
        "|---|---|---|---|---|---|",
    ]
    for f in FORMATS:
        version = owner_version(f.owner) if f.owner != "vitreg" else "vitreg's own (round trip)"
        cells = (f.what, f"`{f.command}`", f.recognised_by, f.resampling, f.preprocessing, version)
        rows.append(f"| {' | '.join(cells)} |")
    return "\n".join(rows)
