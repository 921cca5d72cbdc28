"""Typed dataclass configs: YAML file + ``key=value`` overrides, validated, saved beside every run.

A bad key is an error that names the key and the allowed ones, before any work starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from vitreg.errors import ConfigError

T = TypeVar("T")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (a YAML scalar or a command-line string) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, typing.get_args(tp), key)
    if origin is typing.Literal:
        return _coerce_literal(value, typing.get_args(tp), key)
    if origin in (list, tuple):
        return _coerce_sequence(value, origin, typing.get_args(tp), key)
    if origin is dict or tp is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    scalar = _SCALARS.get(tp)
    return scalar(value, key) if scalar else value


def _coerce_union(value: Any, args: tuple[Any, ...], key: str) -> Any:
    is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
    if is_none and type(None) in args:
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, key)
        except ConfigError as err:
            errors.append(str(err))
    raise ConfigError(errors[0] if errors else f"{key}: cannot use {value!r}")


def _coerce_literal(value: Any, allowed: tuple[Any, ...], key: str) -> Any:
    for a in allowed:
        if (isinstance(value, str) and str(a) == value) or (type(value) is type(a) and value == a):
            return a
    raise ConfigError(f"{key}={value!r} is not allowed; allowed values: {', '.join(map(str, allowed))}")


def _coerce_sequence(value: Any, origin: Any, args: tuple[Any, ...], key: str) -> Any:
    if origin is tuple and len(args) > 1 and args[-1] is not Ellipsis:  # fixed length, e.g. tuple[int, int]
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or len(items) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(items, args, strict=True))
    inner = args[0] if args else str
    if isinstance(value, str):
        value = [v for v in value.split(",") if v != ""] if value.strip() else []
    if not isinstance(value, list | tuple):
        value = [value]
    out = [_coerce(v, inner, key) for v in value]
    return tuple(out) if origin is tuple else out


def _to_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ConfigError(f"{key}={value!r} is not a boolean; allowed values: true, false")


def _to_int(value: Any, key: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} is not an integer")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} is not an integer") from None
    if not math.isfinite(f) or f != int(f):
        raise ConfigError(f"{key}={value!r} is not an integer")
    return int(f)


def _to_float(value: Any, key: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} is not a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} is not a number") from None


def _to_str(value: Any, key: str) -> str:
    if isinstance(value, dict | list):
        raise ConfigError(f"{key}: expected a single value, got {value!r}")
    return str(value)


_SCALARS: dict[Any, Any] = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (possibly nested) dict, rejecting unknown keys by name."""
    types_ = _field_types(cls)
    unknown = [k for k in data if k not in types_]
    if unknown:
        hint = "".join(
            f" (did you mean '{prefix}{name}.{unknown[0]}'?)"
            for name, tp in types_.items()
            if dataclasses.is_dataclass(tp) and unknown[0] in {f.name for f in dataclasses.fields(tp)}
        )
        allowed = ", ".join(prefix + k for k in types_)
        # repr: a key may hold a newline or quotes, and the message stays one line
        raise ConfigError(f"unknown config key {prefix + str(unknown[0])!r}{hint}; allowed keys: {allowed}")
    missing = [
        f.name
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing config key '{prefix}{missing[0]}'")
    kwargs = {k: _coerce(v, types_[k], prefix + k) for k, v in data.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def validate_all(obj: Any) -> None:
    """Call ``validate()`` on ``obj`` and on every dataclass nested in it (configs built in Python, not parsed)."""
    if isinstance(obj, list | tuple):
        for item in obj:
            validate_all(item)
        return
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return
    for f in dataclasses.fields(obj):
        validate_all(getattr(obj, f.name))
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()


def to_dict(obj: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(obj), default=str))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a=1", "b.c=x"]`` -> ``{"a": "1", "b": {"c": "x"}}`` (strings are coerced later by type)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def yaml_error(path: str | Path, err: yaml.YAMLError) -> str:
    """One line for a YAML file that does not parse: the file, where, and what (PyYAML's own text spans lines)."""
    mark = getattr(err, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    position = getattr(err, "position", None)  # a ReaderError: a character YAML does not allow
    if not where and isinstance(position, int):
        where = f" (character {position})"
    what = getattr(err, "problem", None) or getattr(err, "reason", None) or str(err)
    return f"{path}: not valid YAML{where}: {' '.join(str(what).split())}"


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults of ``cls`` <- YAML file ``path`` <- ``key=value`` overrides; unknown keys raise ConfigError."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(yaml_error(path, err)) from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: cannot be read ({err})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys to values")
        data = loaded
    merged = _merge(data, parse_overrides(overrides or []))
    try:
        return from_dict(cls, merged)
    except ConfigError as err:
        if path is None or (overrides and _file_is_fine(cls, data)):
            raise  # the message names the key, and the key came from an override
        raise ConfigError(f"{path}: {err}") from None


def _file_is_fine(cls: type, data: dict[str, Any]) -> bool:
    """Whether the file's own keys and values build ``cls`` (so a failure came from an override)."""
    try:
        from_dict(cls, data)
    except ConfigError:
        return False
    return True


def save_config(obj: Any, directory: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config beside the run's outputs so every result traces back to it."""
    from vitreg import atomic

    data = to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    return atomic.write_yaml(Path(directory) / name, data)
