"""Seconds until an actor is back and serving after SIGKILL, on any deployment config.

    .venv/bin/python bench/restart.py --config deploy/local.toml --actors draft,verifier --kills 2

Starts ``specmemo up`` with its own run root, waits for every actor, SIGKILLs each named actor
``--kills`` times in turn (``deploy.faults.kill_and_wait``: back = a new process ready that answers
a probe call), then asks the verifier one short chat turn (when there is one) to show the
restarted pair still answers, and stops the deployment with Ctrl-C's path.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from specmemo.deploy.faults import kill_and_wait
from specmemo.deploy.local import LocalDeployment, actor_rows


def _kib(path: str, key: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def print_memory(kernel_pid: int, client) -> None:
    """Resident memory of every process of the deployment: RSS counts shared pages in each process
    that maps them, PSS divides them among those processes, so the PSS sum is the physical total."""
    rows = {name: row.pid for name, row in actor_rows(client).items()}
    children = Path(f"/proc/{kernel_pid}/task/{kernel_pid}/children").read_text().split()
    for pid in map(int, children):
        if pid not in rows.values():
            rows[f"({Path(f'/proc/{pid}/comm').read_text().strip()})"] = pid
    rows["kernel"] = kernel_pid
    total_rss = total_pss = 0
    for name, pid in rows.items():
        rss, pss = _kib(f"/proc/{pid}/status", "VmRSS"), _kib(f"/proc/{pid}/smaps_rollup", "Pss")
        total_rss, total_pss = total_rss + rss, total_pss + pss
        print(
            f"  {name:12s} pid {pid:7d}  RSS {rss / 1024:8.0f} MiB  PSS {pss / 1024:8.0f} MiB  "
            f"peak RSS {_kib(f'/proc/{pid}/status', 'VmHWM') / 1024:8.0f} MiB"
        )
    print(
        f"  {'all':12s}              RSS {total_rss / 1024:8.0f} MiB  PSS {total_pss / 1024:8.0f} MiB "
        f"(PSS: shared weights counted once)",
        flush=True,
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="deploy/tiny.toml")
    p.add_argument("--actors", default="draft,verifier")
    p.add_argument("--kills", type=int, default=2, help="SIGKILLs per actor")
    args = p.parse_args()
    dep = LocalDeployment(Path(args.config), prefix="smr")
    t0 = time.monotonic()
    try:
        dep.wait_ready(timeout=900)
        print(f"deployment ready after {time.monotonic() - t0:.1f} s ({args.config})")
        with dep.client(timeout=120) as c:
            print_memory(dep.proc.pid, c)
            for _ in range(args.kills):
                for name in args.actors.split(","):
                    print(f"{name} back after SIGKILL in {kill_and_wait(c, name, 300):.2f} s", flush=True)
            if "verifier" in actor_rows(c):
                reply = c.ask(c.open_session(), "Say hello in Python.", max_new_tokens=12)
                print(f"chat after the kills: {reply.text[:60]!r}, {reply.tokens_per_s:.2f} tok/s")
    finally:
        dep.stop(timeout=120)
        dep.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
