"""The tiny deployment, ``deploy/tiny.toml``, as the one source of every tiny-pair config.

Tests, the soak command and the benchmarks take its tables and change a few keys rather than
writing the tiny random-weight pair out again, so that a change to the tiny pair (a model
setting, a memory budget) reaches all of them at once.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .toml_writer import to_toml

TINY_CONFIG = Path(__file__).with_name("tiny.toml")

#: The memory actor and the tiny draft and verifier models: the speculative pair alone.
PAIR = ("memory", "draft", "verifier")


def tiny_config(
    name: str, actors: Iterable[str] | None = None, deployment: dict[str, Any] | None = None, **tables: dict[str, Any]
) -> str:
    """TOML text of ``deploy/tiny.toml`` named ``name``, with only ``actors`` (default: all, in
    the file's order), its ``[deployment]`` keys updated from ``deployment`` and each actor's
    table merged with ``tables[actor]`` (nested tables merged key by key, e.g.
    ``draft={"config": {"threads": 2}}``). An actor of ``actors`` that the file lacks is taken
    from ``tables`` as given; a table for an actor left out is a ValueError."""
    data = tomllib.loads(TINY_CONFIG.read_text())
    shipped = data["actors"]
    names = list(actors) if actors is not None else list(shipped)
    if set(tables) - set(names):
        raise ValueError(f"tables for actors not in the deployment: {sorted(set(tables) - set(names))}")
    return to_toml(
        {
            "deployment": {**data["deployment"], **(deployment or {}), "name": name},
            "actors": {n: _merged(shipped.get(n, {}), tables.get(n, {})) for n in names},
        }
    )


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merged(out.get(key, {}), value) if isinstance(value, dict) else value
    return out
