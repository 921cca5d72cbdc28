"""Typed dataclass configs: YAML file + ``key=value`` overrides, validated, saved beside every run.

A bad key is an error that names the key and the allowed ones, before any work starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from vitreg.errors import ConfigError
from vitreg.typed import Reader, required, type_hints

T = TypeVar("T")


class ConfigReader(Reader):
    """Config files and ``key=value`` overrides through the one typed decoder (:mod:`vitreg.typed`): a string
    converts to its field's type (``"3"`` -> 3, ``"a,b"`` -> a list, ``"none"`` -> None, ``"{a: 1}"`` -> a
    mapping), unknown keys are refused with the allowed ones, and each dataclass's ``validate()`` runs."""

    error = ConfigError

    def is_none(self, value: Any) -> bool:
        return value is None or (isinstance(value, str) and value.lower() in ("none", "null"))

    def literal(self, allowed: tuple[Any, ...], value: Any, key: str) -> Any:
        for a in allowed:
            if (isinstance(value, str) and str(a) == value) or (type(value) is type(a) and value == a):
                return a
        raise ConfigError(f"{key}={value!r} is not allowed; allowed values: {', '.join(map(str, allowed))}")

    def items(self, value: Any, key: str, length: int | None) -> list[Any] | tuple[Any, ...]:
        if length is not None:  # fixed length, e.g. tuple[int, int]: "64,96" or [64, 96]
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, list | tuple) or len(items) != length:
                raise self.wrong_length(length, value, key)
            return items
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""] if value.strip() else []
        return value if isinstance(value, list | tuple) else [value]

    def item_key(self, key: str, index: int) -> str:
        return key  # a command-line list is one key=a,b,c

    def mapping(self, args: tuple[Any, ...], value: Any, key: str) -> Any:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)

    def scalar(self, tp: Any, value: Any, key: str) -> Any:
        convert = _SCALARS.get(tp)
        return convert(value, key) if convert else value

    def upgrade(self, tp: type, value: dict[str, Any]) -> dict[str, Any]:
        # A config class whose keys changed reads the old ones too: its ``upgrade_keys(data) -> data`` turns a saved
        # config of an older vitreg into today's layout (e.g. DiagnoseConfig's flat rule/cutoff/percentile).
        upgrade_keys = getattr(tp, "upgrade_keys", None)
        return upgrade_keys(value) if callable(upgrade_keys) else value

    def check_keys(self, tp: type, value: dict[str, Any], key: str) -> None:
        prefix = f"{key}." if key else ""
        types_ = {f.name: type_hints(tp)[f.name] for f in dataclasses.fields(tp)}
        unknown = [k for k in value if k not in types_]
        if unknown:
            hint = "".join(
                f" (did you mean '{prefix}{name}.{unknown[0]}'?)"
                for name, ftp in types_.items()
                if dataclasses.is_dataclass(ftp) and unknown[0] in {f.name for f in dataclasses.fields(ftp)}
            )
            allowed = ", ".join(prefix + k for k in types_)
            # repr: a key may hold a newline or quotes, and the message stays one line
            raise ConfigError(f"unknown config key {prefix + str(unknown[0])!r}{hint}; allowed keys: {allowed}")
        missing = [f.name for f in dataclasses.fields(tp) if f.name not in value and required(f)]
        if missing:
            raise self.missing(prefix + missing[0])

    def built(self, obj: Any) -> Any:
        validate = getattr(obj, "validate", None)
        if callable(validate):
            validate()
        return obj

    def fail(self, key: str, expected: str, value: Any) -> ConfigError:
        return ConfigError(f"{key}: expected {expected}, got {value!r}")

    def wrong_length(self, n: int, value: Any, key: str) -> ConfigError:
        return ConfigError(f"{key}: expected {n} values, got {value!r}")

    def not_mapping(self, tp: type, value: Any, key: str) -> ConfigError:
        return ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")

    def missing(self, key: str) -> ConfigError:
        return ConfigError(f"missing config key '{key}'")


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
    """Build dataclass ``cls`` from a (possibly nested) dict, rejecting unknown keys by name (``prefix``: where the
    dict sits, e.g. ``"data."``, for messages)."""
    return typing.cast(T, ConfigReader().read(cls, data, prefix.removesuffix(".")))


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
