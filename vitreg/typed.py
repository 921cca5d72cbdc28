"""The one typed decoder: plain data (JSON, YAML, ``key=value`` strings) -> an annotated value, dataclasses nested in
lists, tuples, dicts, unions and literals, checked field by field; the first value that does not fit is named by
its key (``a.b[2]``).

:class:`Reader` walks the annotation; what a value may look like and how a misfit is worded is its subclass's:

* :class:`JsonReader` (run-directory results, model sidecars): every value must already have its type, unknown keys
  are ignored (a newer minor version may add some), a missing key takes the field's default or is an error, and a
  field can be stored under another JSON name with ``field(metadata={"json": "global"})`` (``global`` is a Python
  keyword). Errors name the file: ``{file}: {key} should be an integer, got 'x'``.
* ``vitreg.config.ConfigReader`` (config files and command-line overrides): strings convert to the field's type,
  unknown keys are refused with the allowed ones, and each dataclass's ``validate()`` runs.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, TypeVar

import numpy as np

from vitreg.errors import VitregError

T = TypeVar("T")


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of dataclass ``cls`` (cached: a run directory decodes thousands of fields)."""
    return typing.get_type_hints(cls)


def json_name(f: dataclasses.Field[Any]) -> str:
    """The key field ``f`` is stored under."""
    return str(f.metadata.get("json", f.name))


def required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


class Reader:
    """The walk over an annotation; subclasses say which values fit and how a misfit is worded."""

    #: The error every misfit raises (a union tries its arms and catches it).
    error: type[VitregError] = VitregError

    def read(self, tp: Any, value: Any, key: str) -> Any:
        """``value`` as annotation ``tp``, found at ``key`` ("" for the top level)."""
        if tp is Any:
            return value
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            return self.union(args, value, key)
        if origin is typing.Literal:
            return self.literal(args, value, key)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return self.dataclass(tp, value, key)
        if origin in (list, tuple) or tp in (list, tuple):
            return self.sequence(origin or tp, args, value, key)
        if origin is dict or tp is dict:
            return self.mapping(args, value, key)
        return self.scalar(tp, value, key)

    # -------------------------------------------------------------------------------- the shared shapes
    def union(self, args: tuple[Any, ...], value: Any, key: str) -> Any:
        if self.is_none(value):
            if type(None) in args:
                return None
            self.refuse_none(args, value, key)
        first: VitregError | None = None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return self.read(arg, value, key)
            except self.error as err:
                first = first or err  # the first arm's complaint is the one that reads naturally
        raise first or self.fail(key, "a value", value)

    def sequence(self, origin: Any, args: tuple[Any, ...], value: Any, key: str) -> Any:
        fixed = origin is tuple and bool(args) and args[-1] is not Ellipsis  # e.g. tuple[int, int]
        items = self.items(value, key, len(args) if fixed else None)
        if fixed:
            if len(items) != len(args):
                raise self.wrong_length(len(args), value, key)
            return tuple(
                self.read(a, v, self.item_key(key, i)) for i, (a, v) in enumerate(zip(args, items, strict=True))
            )
        inner = args[0] if args else Any
        out = [self.read(inner, v, self.item_key(key, i)) for i, v in enumerate(items)]
        return tuple(out) if origin is tuple else out

    def dataclass(self, tp: type, value: Any, key: str) -> Any:
        if isinstance(value, tp):
            return value  # already built (a config made in Python); its own validate() is its caller's
        if not isinstance(value, dict):
            raise self.not_mapping(tp, value, key)
        value = self.upgrade(tp, value)
        self.check_keys(tp, value, key)
        hints = type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            name = json_name(f)
            sub = f"{key}.{name}" if key else name
            if name in value:
                kwargs[f.name] = self.read(hints[f.name], value[name], sub)
            elif required(f):
                raise self.missing(sub)
        return self.built(tp(**kwargs))

    # -------------------------------------------------------------------------- what a subclass decides
    def is_none(self, value: Any) -> bool:
        return value is None

    def refuse_none(self, args: tuple[Any, ...], value: Any, key: str) -> None:
        """A null where the union has no None: raise here, or return to let the arms try it."""

    def literal(self, allowed: tuple[Any, ...], value: Any, key: str) -> Any:
        if value not in allowed:
            raise self.fail(key, "one of " + ", ".join(map(repr, allowed)), value)
        return value

    def items(self, value: Any, key: str, length: int | None) -> list[Any] | tuple[Any, ...]:
        """The items of a list value (``length``: the number a fixed-length tuple needs)."""
        raise NotImplementedError

    def item_key(self, key: str, index: int) -> str:
        return f"{key}[{index}]"

    def mapping(self, args: tuple[Any, ...], value: Any, key: str) -> Any:
        raise NotImplementedError

    def scalar(self, tp: Any, value: Any, key: str) -> Any:
        raise NotImplementedError

    def upgrade(self, tp: type, value: dict[str, Any]) -> dict[str, Any]:
        """``value`` with keys of an older layout read as today's (the default: as it is)."""
        return value

    def check_keys(self, tp: type, value: dict[str, Any], key: str) -> None:
        """Refuse keys the dataclass does not have (or accept them silently: the default)."""

    def built(self, obj: Any) -> Any:
        return obj

    def fail(self, key: str, expected: str, value: Any) -> VitregError:
        raise NotImplementedError

    def wrong_length(self, n: int, value: Any, key: str) -> VitregError:
        return self.fail(key, f"a list of {n} values", value)

    def not_mapping(self, tp: type, value: Any, key: str) -> VitregError:
        return self.fail(key, f"a mapping ({tp.__name__})", value)

    def missing(self, key: str) -> VitregError:
        raise NotImplementedError


_NON_FINITE = ("nan", "inf", "-inf", "NaN", "Infinity", "-Infinity")


class JsonReader(Reader):
    """JSON data as written by vitreg: values already of their type; errors of class ``error`` naming ``source``."""

    def __init__(self, source: str, error: type[VitregError]):
        self.source = source
        self.error = error

    def fail(self, key: str, expected: str, value: Any) -> VitregError:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return self.error(f"{self.source}: {key or 'the top level'} should be {expected}, got {shown}")

    def missing(self, key: str) -> VitregError:
        return self.error(f"{self.source}: {key} is missing")

    def refuse_none(self, args: tuple[Any, ...], value: Any, key: str) -> None:
        raise self.fail(key, " or ".join(_name(a) for a in args), value)

    def items(self, value: Any, key: str, length: int | None) -> list[Any] | tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            raise self.fail(key, "a list", value)
        return value

    def mapping(self, args: tuple[Any, ...], value: Any, key: str) -> Any:
        if not isinstance(value, dict):
            raise self.fail(key, "a mapping", value)
        kt, vt = args if args else (str, Any)
        return {self._key(kt, k, key): self.read(vt, v, f"{key}.{k}") for k, v in value.items()}

    def _key(self, kt: Any, k: str, key: str) -> Any:
        if kt is int:  # JSON keys are strings; dict[int, ...] fields are written with str(int) keys
            try:
                return int(k)
            except ValueError:
                raise self.fail(key, "a mapping with integer keys", k) from None
        return k

    def scalar(self, tp: Any, value: Any, key: str) -> Any:
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
            if isinstance(value, str) and value in _NON_FINITE:
                return float(value.replace("Infinity", "inf"))  # written for non-finite values (JSON has none)
        elif tp is str:
            if isinstance(value, str):
                return value
        else:
            return value
        raise self.fail(key, _name(tp), value)


def _name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def from_json(cls: type[T], data: Any, source: str, error: type[VitregError]) -> T:
    """``cls`` built from JSON ``data`` read from ``source`` (a file name, for messages); ``error`` on a misfit."""
    return typing.cast(T, JsonReader(source, error).read(cls, data, ""))
