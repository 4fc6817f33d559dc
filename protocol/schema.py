"""Typed message classes: declare a body as a dataclass, validate it at the boundary.

A message class is a ``@message`` dataclass whose fields have simple annotations:
``int``, ``float``, ``str``, ``bool``, ``bytes``, ``np.ndarray``, ``Any``, ``list[T]``,
``dict[str, T]``, a ``str`` enum (:class:`enum.StrEnum`: one of its values), another message
class, or ``T | None``. :func:`from_wire` checks a decoded msgpack body against the class,
ignoring unknown fields (forward compatibility) and raising :class:`BadRequest` naming the
first offending field. A field declared with :func:`absent_if_none` is left out of the wire
map while it is None (the reader tests for the key, not for nil).
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, TypeVar

import numpy as np

from .errors import BadRequest

T = TypeVar("T")
#: Per message class, its fields as (name, annotation, required), worked out once: calling
#: ``dataclasses.fields`` and ``typing.get_type_hints`` per message cost more than decoding it.
_PLANS: dict[type, tuple[tuple[str, Any, bool], ...]] = {}
_NAMES: dict[type, tuple[tuple[str, bool], ...]] = {}  # (name, left out while None)
#: The metadata key that :func:`absent_if_none` sets.
_ABSENT_IF_NONE = "absent_if_none"
#: Values that ``_plain`` passes through unchanged.
_LEAVES = (str, int, float, bool, bytes, type(None), np.ndarray)


@typing.dataclass_transform()
def message(cls: type[T]) -> type[T]:
    """Class decorator: a frozen-free, slotted dataclass usable as a wire schema."""
    return dataclasses.dataclass(slots=True)(cls)


def absent_if_none() -> Any:
    """A field that defaults to None and is not written to the wire while it is None."""
    return dataclasses.field(default=None, metadata={_ABSENT_IF_NONE: True})


def _plan(cls: type) -> tuple[tuple[str, Any, bool], ...]:
    plan = _PLANS.get(cls)
    if plan is None:
        hints = typing.get_type_hints(cls)
        plan = _PLANS[cls] = tuple(
            (f.name, hints[f.name], f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(cls)
        )
    return plan


def from_wire(cls: type[T], body: Any, where: str = "body") -> T:
    """Validate ``body`` (a decoded msgpack value) against message class ``cls``."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise BadRequest(f"{where} must be a map, got {type(body).__name__}")
    kwargs = {}
    for name, tp, required in _plan(cls):
        if name in body:
            value = body[name]
            kwargs[name] = value if tp is Any else _check(tp, value, f"{where}.{name}")
        elif required:
            raise BadRequest(f"{where}: missing required field '{name}'")
    return cls(**kwargs)


def to_wire(msg: Any) -> dict[str, Any]:
    """A message instance as a plain map (nested messages become maps, arrays stay arrays)."""
    cls = type(msg)
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple((f.name, bool(f.metadata.get(_ABSENT_IF_NONE))) for f in dataclasses.fields(msg))
    out = {}
    for name, absent in names:
        value = getattr(msg, name)
        if value is None and absent:
            continue
        out[name] = value if isinstance(value, _LEAVES) else _plain(value)
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
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_wire(tp, value, where)
    if isinstance(tp, type) and issubclass(tp, enum.StrEnum):
        try:
            return tp(value)
        except ValueError:
            raise BadRequest(f"{where} must be one of {', '.join(m.value for m in tp)}, got {value!r:.40}") from None
    raise TypeError(f"unsupported schema annotation {tp!r} at {where}")
