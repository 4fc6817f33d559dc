"""Typed message classes: declare a body as a dataclass, validate it at the boundary.

A message class is a ``@message`` dataclass whose fields have simple annotations:
``int``, ``float``, ``str``, ``bool``, ``bytes``, ``np.ndarray``, ``Any``, ``list[T]``,
``dict[str, T]``, another message class, or ``T | None``. :func:`from_wire` checks a decoded
msgpack body against the class, ignoring unknown fields (forward compatibility) and raising
:class:`BadRequest` naming the first offending field.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

import numpy as np

from .errors import BadRequest

T = TypeVar("T")
_HINTS: dict[type, dict[str, Any]] = {}


def message(cls: type[T]) -> type[T]:
    """Class decorator: a frozen-free, slotted dataclass usable as a wire schema."""
    return dataclasses.dataclass(slots=True)(cls)


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = hints
    return hints


def from_wire(cls: type[T], body: Any, where: str = "body") -> T:
    """Validate ``body`` (a decoded msgpack value) against message class ``cls``."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise BadRequest(f"{where} must be a map, got {type(body).__name__}")
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in body:
            kwargs[f.name] = _check(hints[f.name], body[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise BadRequest(f"{where}: missing required field '{f.name}'")
    return cls(**kwargs)


def to_wire(msg: Any) -> dict[str, Any]:
    """A message instance as a plain map (nested messages become maps, arrays stay arrays)."""
    out = {}
    for f in dataclasses.fields(msg):
        out[f.name] = _plain(getattr(msg, f.name))
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_wire(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _check(tp: Any, value: Any, where: str) -> Any:
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(arg, value, where)
            except BadRequest as exc:
                errors.append(str(exc))
        raise BadRequest(errors[0] if len(errors) == 1 else f"{where}: no alternative matched")
    if origin is list:
        if not isinstance(value, list):
            raise BadRequest(f"{where} must be a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_check(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise BadRequest(f"{where} must be a map, got {type(value).__name__}")
        _, item = typing.get_args(tp) or (str, Any)
        return {str(k): _check(item, v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, np.generic) and not isinstance(value, np.ndarray):
        value = value.item()  # numpy scalars from in-process callers; msgpack sends them as plain
    if tp is bool:
        if not isinstance(value, bool):
            raise BadRequest(f"{where} must be a boolean, got {type(value).__name__}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequest(f"{where} must be an integer, got {type(value).__name__}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadRequest(f"{where} must be a number, got {type(value).__name__}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise BadRequest(f"{where} must be a string, got {type(value).__name__}")
        return value
    if tp is bytes:
        if not isinstance(value, (bytes, bytearray)):
            raise BadRequest(f"{where} must be binary, got {type(value).__name__}")
        return bytes(value)
    if tp is np.ndarray:
        if not isinstance(value, np.ndarray):
            raise BadRequest(f"{where} must be an array, got {type(value).__name__}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_wire(tp, value, where)
    raise TypeError(f"unsupported schema annotation {tp!r} at {where}")
