"""Result dataclasses <-> JSON: one typed encoder and decoder for every file of a run directory.

``to_json`` turns a (nested) result dataclass into plain JSON data; ``from_json`` builds it back, checking every
value against the field's annotation and naming the file and key of the first one that does not fit. Unknown keys
are ignored (a newer minor version may add some); a missing key takes the field's default or is an error.
A field can be stored under another JSON name with ``field(metadata={"json": "global"})`` (``global`` is a Python
keyword).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from vitreg.atomic import plain
from vitreg.errors import RunDirError

T = TypeVar("T")

#: Version of the run-directory contract this vitreg writes and reads. Files without ``schema_version`` were written
#: before it was recorded, under the same layout: they read as version 1.
SCHEMA_VERSION = 1


def to_json(obj: Any) -> Any:
    """Plain JSON data (dicts, lists, str, int, float, bool, None) for a result dataclass or container of them."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {_json_name(f): to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    if isinstance(obj, np.ndarray | np.generic | Path):
        return plain(obj)
    return obj


def from_json(cls: type[T], data: Any, source: str | Path) -> T:
    """``cls`` built from JSON ``data`` read from ``source`` (a file name for messages); raises RunDirError."""
    return typing.cast(T, _decode(cls, data, str(source), ""))


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


def _json_name(f: dataclasses.Field) -> str:
    return str(f.metadata.get("json", f.name))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fail(source: str, key: str, expected: str, value: Any) -> RunDirError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return RunDirError(f"{source}: {key or 'the top level'} should be {expected}, got {shown}")


def _decode(tp: Any, value: Any, source: str, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _decode_union(args, value, source, key)
    if origin is typing.Literal:
        if value not in args:
            raise _fail(source, key, "one of " + ", ".join(map(repr, args)), value)
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _decode_dataclass(tp, value, source, key)
    if origin in (list, tuple) or tp in (list, tuple):
        return _decode_sequence(tp, origin or tp, args, value, source, key)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _fail(source, key, "a mapping", value)
        kt, vt = args if args else (str, Any)
        return {_decode_key(kt, k, source, key): _decode(vt, v, source, f"{key}.{k}") for k, v in value.items()}
    return _decode_scalar(tp, value, source, key)


def _decode_union(args: tuple[Any, ...], value: Any, source: str, key: str) -> Any:
    if value is None:
        if type(None) in args:
            return None
        raise _fail(source, key, " or ".join(_name(a) for a in args), value)
    first: RunDirError | None = None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _decode(arg, value, source, key)
        except RunDirError as err:
            first = first or err
    raise first or _fail(source, key, "a value", value)


def _decode_dataclass(tp: type, value: Any, source: str, key: str) -> Any:
    if not isinstance(value, dict):
        raise _fail(source, key, f"a mapping ({tp.__name__})", value)
    hints = _hints(tp)
    kwargs = {}
    for f in dataclasses.fields(tp):
        name = _json_name(f)
        sub = f"{key}.{name}" if key else name
        if name in value:
            kwargs[f.name] = _decode(hints[f.name], value[name], source, sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RunDirError(f"{source}: {sub} is missing")
    return tp(**kwargs)


def _decode_sequence(tp: Any, origin: Any, args: tuple[Any, ...], value: Any, source: str, key: str) -> Any:
    if not isinstance(value, list | tuple):
        raise _fail(source, key, "a list", value)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise _fail(source, key, f"a list of {len(args)} values", value)
        return tuple(_decode(a, v, source, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    inner = args[0] if args else Any
    items = [_decode(inner, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _decode_key(kt: Any, k: str, source: str, key: str) -> Any:
    if kt is int:
        try:
            return int(k)
        except ValueError:
            raise _fail(source, key, "a mapping with integer keys", k) from None
    return k


def _decode_scalar(tp: Any, value: Any, source: str, key: str) -> Any:
    if isinstance(value, np.generic):
        value = value.item()  # results built in memory may hold numpy scalars
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and value in ("nan", "inf", "-inf", "NaN", "Infinity", "-Infinity"):
            return float(value.replace("Infinity", "inf"))  # written for non-finite values (JSON has none)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise _fail(source, key, _name(tp), value)


def _name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))
