"""A/B of the kernel's coalescing (``coalesce_us``): the same calls against two deployments that
differ only in that setting, alternated round by round so that both see the same machine.

    .venv/bin/python bench/coalesce.py --rounds 8 --values 0,200

Per round and deployment: the pipelined rate of ``echo.echo`` from a raw DEALER (window 128,
the case coalescing is for), the p50 of single round trips (one call in flight: coalescing must
not touch it), and the rate of an AsyncClient with 64 tasks. Prints medians and the median of
the per-round ratios against the first value.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import messaging as m  # noqa: E402  (the messaging benchmark's measuring functions)

from specmemo.deploy.tiny import tiny_config  # noqa: E402


def deployment(coalesce_us: int):
    """The messaging benchmark's deployment (the kernel and one echo actor) with ``coalesce_us``."""
    dep, _ = m.start_deployment(tiny_config(f"c{coalesce_us}", ["echo"], {"coalesce_us": coalesce_us}), None)
    return dep, dep.actor_pid("echo")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--values", default="0,200", help="coalesce_us values, the first is the reference")
    p.add_argument("--quick", action="store_true", help="fewer calls per measurement")
    args = p.parse_args()
    values = [int(v) for v in args.values.split(",")]
    size = m.SIZES["quick" if args.quick else "full"]
    deps = {}
    try:
        for v in values:
            deps[v] = deployment(v)
        rows = {v: [] for v in values}
        for r in range(args.rounds):
            for v in values if r % 2 == 0 else values[::-1]:
                dep, actor = deps[v]
                sock = m.dealer(dep.endpoint)
                out = m.frames_round(
                    sock,
                    b"echo",
                    "echo",
                    {"data": m.ECHO_DATA},
                    size,
                    {"client": os.getpid(), "kernel": dep.proc.pid, "actor": actor},
                )
                sock.close()
                out["async_rate"] = m.async_client_rate(dep.endpoint, size["msgs"], 64)
                rows[v].append(out)
            print(
                f"round {r + 1}/{args.rounds}: "
                + ", ".join(f"{v} µs: {rows[v][-1]['rate']:,.0f}/s p50 {rows[v][-1]['p50_us']:.0f} µs" for v in values),
                flush=True,
            )
    finally:
        for dep, _ in deps.values():
            dep.cleanup()
    ref = values[0]
    print(
        "\n| coalesce_us | pipelined msgs/s | x ref | p50 µs (1 in flight) | x ref | AsyncClient msgs/s | x ref | "
        "kernel CPU µs/msg |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for v in values:

        def med(key, rows=rows[v]):
            return statistics.median(x[key] for x in rows)

        def ratio(key):
            return statistics.median(a[key] / b[key] for a, b in zip(rows[v], rows[ref]))

        kcpu = statistics.median(x["cpu_us"]["kernel"] for x in rows[v])
        print(
            f"| {v} | {med('rate'):,.0f} | {ratio('rate'):.2f}x | {med('p50_us'):.0f} | {ratio('p50_us'):.2f}x "
            f"| {med('async_rate'):,.0f} | {ratio('async_rate'):.2f}x | {kcpu:.0f} |"
        )
    (m.RESULTS / "coalesce.json").write_text(
        json.dumps({"values": values, "rows": rows, "when": time.strftime("%Y-%m-%d %H:%M")}, default=float, indent=1)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
