"""A/B of the AsyncClient's held requests (``HOLD_FROM``): the same calls from an AsyncClient
that holds requests for its flusher and from one that always sends at once, alternated round
by round against one deployment (kernel + echo actor).

    .venv/bin/python bench/async_hold.py

Prints, per number of concurrent tasks, the median calls/s of each and the median of the
per-round ratios (held / at once).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import messaging as m  # noqa: E402  (the messaging benchmark's deployment pieces)

from specmemo.deploy.tiny import tiny_config  # noqa: E402
from specmemo.protocol import client as client_module  # noqa: E402


class AtOnce(client_module.AsyncClient):
    """An AsyncClient that never holds: every request is sent by its caller."""

    async def _post(self, frames, call_id=0):
        await client_module.AsyncCaller._post(self, frames, call_id)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--calls", type=int, default=6000)
    p.add_argument("--tasks", default="2,8,64")
    args = p.parse_args()
    dep, _ = m.start_deployment(tiny_config("bench", ["echo"]), None)
    endpoint = dep.endpoint
    try:
        print(f"HOLD_FROM = {client_module.HOLD_FROM}; {args.rounds} alternated rounds of {args.calls} calls")
        print("| tasks | held calls/s | at once calls/s | held / at once |")
        print("| ---: | ---: | ---: | ---: |")
        for tasks in map(int, args.tasks.split(",")):
            held, direct = [], []
            for r in range(args.rounds):
                pair = [(client_module.AsyncClient, held), (AtOnce, direct)]
                for cls, out in pair if r % 2 == 0 else pair[::-1]:
                    out.append(m.async_client_rate(endpoint, args.calls, tasks, cls))
            ratio = statistics.median(a / b for a, b in zip(held, direct))
            print(f"| {tasks} | {statistics.median(held):,.0f} | {statistics.median(direct):,.0f} | {ratio:.2f}x |")
    finally:
        dep.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
