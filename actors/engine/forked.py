"""Work that must run on more torch threads than this process may start: in a forked child.

A zygote loads models on one thread (a thread pool would not survive its forks), but what it
measures at load, the precision probe, must run on the threads the forks will serve with. The
child is forked while this process holds no pool, starts its own, answers through a pipe and exits.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch


def on_threads(work: Callable[[], Any], threads: int, timeout: float = 120.0) -> Any | None:
    """`work()` run in a forked child on `threads` torch threads; answers its result (JSON-able: it
    comes back as JSON, tuples as lists), or None if the child failed or had not answered within
    `timeout` seconds (then it is killed: a child forked from a process whose OpenMP pool had run
    can hang in its first parallel region). This process's threads and pools are untouched."""
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
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    with os.fdopen(read, "rb") as got:
        while (left := deadline - time.monotonic()) > 0 and select.select([got], [], [], left)[0]:
            chunk = os.read(got.fileno(), 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        else:
            os.kill(pid, signal.SIGKILL)
            print(f"the child forked to run on {threads} threads gave no answer in {timeout:.0f} s", file=sys.stderr)
    _, status = os.waitpid(pid, 0)
    text = b"".join(chunks).decode()
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0 or not text:
        return None
    return json.loads(text)
