"""The three Linux process controls supervision relies on, through ``prctl(2)``.

- ``die_with_parent``: the calling process gets SIGTERM when its parent dies, so a killed
  kernel leaves no actor (and no zygote) behind.
- ``become_subreaper``: orphans among the caller's descendants are reparented to the caller
  instead of to init; the kernel uses it to adopt the actors its zygote forks.
- ``set_name``: the name ``top`` and ``ps -o comm`` show (15 bytes), so a forked actor, whose
  command line is the zygote's, can still be told apart.

Each returns False where prctl is unavailable (not Linux); callers decide what that means.
"""

from __future__ import annotations

import ctypes
import signal

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, arg: int | bytes) -> bool:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return False
    return libc.prctl(option, arg, 0, 0, 0) == 0


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Receive ``sig`` when the parent (the thread that is our parent) exits."""
    return _prctl(_PR_SET_PDEATHSIG, int(sig))


def become_subreaper() -> bool:
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def set_name(name: str) -> bool:
    return _prctl(_PR_SET_NAME, name.encode()[:15])
