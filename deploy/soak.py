"""``specmemo soak``: load, faults and hostile frames together on a fresh tiny deployment for
minutes, then a summary that says whether everything held.

The pieces are the modules the CI tests drive at small sizes: :mod:`.load` (checked client
calls, exactly-once pipelining), :mod:`.faults` (SIGKILLs) and :mod:`.fuzz` (hostile frames).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import defaultdict
from typing import Any

import numpy as np

from specmemo.protocol import Client

from .faults import killer
from .fuzz import FuzzReport, fuzz
from .load import Tally, beyond_prefix_stores, chat_reference, leaked_bytes, mixed_calls, pipelined_echo
from .local import LocalDeployment, actor_rows, pid_alive
from .tiny import tiny_config

#: The soak's [deployment] keys: fast heartbeats, quick restarts.
SOAK_DEPLOYMENT: dict[str, Any] = {
    "heartbeat_s": 0.3,
    "heartbeat_misses": 10,
    "restart_intensity": 100,
    "restart_period_s": 30,
    "backoff_s": 0.05,
    "backoff_max_s": 0.2,
    "stop_timeout_s": 3,
    "max_message_bytes": 4 << 20,
}

#: The soak's actors: echo and solver beside the tiny pair (no HTTP gateway).
SOAK_ACTORS = ("echo", "solver", "memory", "draft", "verifier")


def soak_config(name: str, actors: tuple[str, ...] = SOAK_ACTORS, **tables: dict[str, Any]) -> str:
    """The soak deployment (deploy/tiny.toml with the soak's [deployment] keys and a one-thread
    solver), named ``name``; ``actors`` and ``tables`` as in :func:`.tiny.tiny_config`."""
    if "solver" in actors:
        tables = {"solver": {"config": {"threads": 1}}, **tables}
    return tiny_config(name, actors, SOAK_DEPLOYMENT, **tables)


def run_soak(
    minutes: float, clients: int = 4, kill_pause: float = 2.0, fuzz_batch: int = 500, seed: int = 0, out: Any = None
) -> int:
    """Load + faults + fuzz together on a fresh tiny deployment; prints a summary; 0 when clean."""
    out = out or sys.stdout

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    say(f"soak: {minutes:g} min, {clients} clients, kills every {kill_pause:g} s, fuzz bursts of {fuzz_batch}")
    expected = chat_reference()
    dep = LocalDeployment(soak_config(f"soak{os.getpid()}"))
    pids: dict[str, int] = {}
    try:
        dep.wait_ready(list(SOAK_ACTORS))
        with Client(dep.endpoint, timeout=10) as c:
            rows = actor_rows(c)
        actors = {n: r.kind for n, r in rows.items()}
        stop = threading.Event()
        tally, fuzzed = Tally(), FuzzReport()
        kills: list[tuple[str, float]] = []
        end = time.monotonic() + minutes * 60

        def fuzz_loop() -> None:
            i = 0
            while not stop.is_set():
                r = fuzz(dep.endpoint, seed + 1000 + i, fuzz_batch, actors)
                fuzzed.sent += r.sent
                fuzzed.expected_replies += r.expected_replies
                fuzzed.replies += r.replies
                fuzzed.not_errors += r.not_errors
                fuzzed.errors.update(r.errors)
                i += 1

        threads = [
            threading.Thread(
                target=mixed_calls,
                args=(dep.endpoint, seed + i, 10**9, tally),
                kwargs={"stop": stop, "chat_expected": expected},
                daemon=True,
            )
            for i in range(clients)
        ]
        threads.append(
            threading.Thread(
                target=killer,
                daemon=True,
                args=(dep.endpoint, ["draft", "verifier", "memory", "solver"], 10**9, kill_pause, kills, stop),
            )
        )
        threads.append(threading.Thread(target=fuzz_loop, daemon=True))
        for t in threads:
            t.start()
        while time.monotonic() < end and all(t.is_alive() for t in threads):
            time.sleep(1.0)
        crashed = [t.name for t in threads if not t.is_alive()]
        stop.set()
        for t in threads:
            t.join(60)
        pipe = pipelined_echo(dep.endpoint, 5000, 64)
        with Client(dep.endpoint, timeout=10) as c:
            usage = leaked_bytes(c)
            rows = actor_rows(c)
        echo_restarts = rows["echo"].restarts
        kernel_alive = dep.proc.poll() is None
        pids = {n: r.pid for n, r in rows.items()}
    finally:
        code = dep.stop()
        dep.cleanup()
    orphans = [n for n, p in pids.items() if pid_alive(p)]
    back = defaultdict(list)
    for name, seconds in kills:
        back[name].append(seconds)
    say(f"calls        {tally.calls} ({tally.ok} ok), wrong results {len(tally.wrong)}, hung {tally.hung}")
    for op in ("echo", "matvec", "solve", "chat"):
        say(f"  {op:<8} {tally.percentiles(op)}")
    say(f"errors       {dict(tally.errors.most_common())}")
    for name, xs in sorted(back.items()):
        say(f"kills        {name:<9} {len(xs):3d} x, back in max {max(xs):.2f} s, median {np.median(xs):.2f} s")
    say(f"restarts     { ({n: r.restarts for n, r in rows.items()}) }")
    say(
        f"fuzz         {fuzzed.sent} frames, {fuzzed.replies}/{fuzzed.expected_replies} typed errors "
        f"expected back, {fuzzed.not_errors} untyped; {dict(fuzzed.errors.most_common())}"
    )
    say(
        f"exactly-once {pipe.answered}/{pipe.sent} answered, lost {pipe.lost}, duplicated {pipe.duplicated}, "
        f"wrong {pipe.wrong}, {pipe.sent / pipe.seconds:.0f} calls/s"
    )
    say(
        f"memory       live {usage.live} B (prefix stores {usage.live - beyond_prefix_stores(usage)} B), "
        f"sessions {len(usage.sessions)}, peak {usage.peak} B "
        f"-> leaked blocks: {'none' if beyond_prefix_stores(usage) == 0 else 'YES'}"
    )
    say(
        f"deployment   kernel alive to the end: {kernel_alive}, echo never restarted: {echo_restarts == 0}, "
        f"stopped with code {code}, orphans {orphans or 'none'}"
    )
    clean = (
        not tally.wrong
        and tally.hung == 0
        and beyond_prefix_stores(usage) == 0
        and kernel_alive
        and fuzzed.replies == fuzzed.expected_replies
        and fuzzed.not_errors == 0
        and "Internal" not in tally.errors
        and "Internal" not in fuzzed.errors
        and pipe.lost == pipe.duplicated == pipe.wrong == 0
        and echo_restarts == 0
        and not crashed
        and code == 0
        and not orphans
    )
    if tally.wrong:
        say("wrong results: " + "; ".join(tally.wrong[:5]))
    say("soak: " + ("clean" if clean else "FAILED"))
    return 0 if clean else 1
