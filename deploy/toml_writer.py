"""TOML text from a config table: the way back from a dict to a file `specmemo up --config` takes
(no TOML writer is installed, and configs need only strings, numbers, booleans, lists and tables)."""

from __future__ import annotations

import json
from typing import Any


def to_toml(table: dict[str, Any], _prefix: str = "") -> str:
    """TOML text of a config table as ``tomllib`` reads it (strings, numbers, booleans, lists,
    nested tables): the way back from a dict to a file that ``specmemo up --config`` takes."""
    scalars = [f"{_key(k)} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    tables = [(k, v) for k, v in table.items() if isinstance(v, dict)]
    lines = [f"[{_prefix}]"] if _prefix and (scalars or not tables) else []
    parts = ["\n".join(lines + scalars)] if lines or scalars else []
    parts += [to_toml(v, f"{_prefix}.{_key(k)}" if _prefix else _key(k)) for k, v in tables]
    return "\n\n".join(p for p in parts if p) + ("\n" if not _prefix else "")


def _key(key: str) -> str:
    return key if key and key.replace("_", "").replace("-", "").isalnum() and key.isascii() else _toml_string(key)


def _toml_string(text: str) -> str:
    """A TOML basic string: JSON's escapes of quotes, backslashes and control characters, plus DEL."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")
