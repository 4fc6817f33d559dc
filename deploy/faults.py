"""Faults injected into a running deployment: SIGKILL an actor and time its return.

- :func:`kill_and_wait`: SIGKILL one actor; seconds until its restarted process serves a call;
- :func:`killer`: kill each of some actors in turn, for a number of rounds (a thread's loop).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from specmemo.protocol import Client, errors

from .local import actor_rows

#: Calls that show an actor serves again after a restart, by actor kind.
PROBES: dict[str, tuple[str, dict[str, Any]]] = {
    "echo": ("echo", {"data": 1}),
    "solver": ("list", {}),
    "memory": ("usage", {}),
    "draft": ("info", {}),
    "verifier": ("sessions", {}),
}


def kill_and_wait(client: Client, name: str, timeout: float = 30.0) -> float:
    """SIGKILL actor ``name``; seconds until a new process is ready and answers a probe call."""
    row = actor_rows(client)[name]
    if row.state != "ready":
        raise RuntimeError(f"{name} is not ready (state {row.state}); cannot kill it")
    old = row.pid
    method, params = PROBES[row.kind]
    os.kill(old, signal.SIGKILL)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            row = actor_rows(client)[name]
            if row.state == "ready" and row.pid != old:
                client.call(name, method, timeout=5, **params)
                return time.monotonic() - t0
        except (errors.ActorDied, errors.UnknownActor, errors.DeadlineExceeded):
            pass
        time.sleep(0.01)
    raise TimeoutError(f"{name} was not back {timeout:.0f} s after SIGKILL")


def killer(
    endpoint: str,
    names: list[str],
    rounds: int,
    pause: float,
    out: list[tuple[str, float]],
    stop: threading.Event | None = None,
    back_timeout: float = 120.0,
) -> None:
    """Kill each actor of ``names`` in turn, ``rounds`` times; appends (name, seconds back)."""
    with Client(endpoint, timeout=10) as c:
        for _ in range(rounds):
            for name in names:
                if stop is not None and stop.is_set():
                    return
                out.append((name, kill_and_wait(c, name, back_timeout)))
                time.sleep(pause)
