"""Work that must run on more torch threads than this process may start: in a forked child.

A zygote loads models on one thread (a thread pool would not survive its forks), but what it
measures at load, the precision probe, must run on the threads the forks will serve with. The
child is forked while this process holds no pool, starts its own, answers through a pipe and exits.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import torch


def on_threads(work: Callable[[], Any], threads: int) -> Any | None:
    """`work()` run in a forked child on `threads` torch threads; answers its result (JSON-able: it
    comes back as JSON, tuples as lists), or None if the child failed. This process's threads and
    pools are untouched."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            os.close(read)
            torch.set_num_threads(threads)
            with os.fdopen(write, "w") as out:
                json.dump(work(), out)
            code = 0
        except BaseException:
            traceback.print_exc()  # the parent answers None; say why here
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as got:
        text = got.read()
    _, status = os.waitpid(pid, 0)
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0 or not text:
        return None
    return json.loads(text)
