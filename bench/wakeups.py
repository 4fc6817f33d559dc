"""Where a lone call's time goes: sequential round trips with the CPU each thread spends per call.

    .venv/bin/python bench/wakeups.py            # processes placed by the scheduler
    .venv/bin/python bench/wakeups.py --pin 0    # every process on CPU 0 (taskset)

Paths, measured in turns in one run: the raw blocking pyzmq echo (as in bench/messaging.py,
through the library's frame functions), the same echo written with pyzmq's own
``send_multipart``/``recv_multipart`` on both sides (is the baseline as fast as pyzmq goes?),
a bare trio echo server on the library's socket adapter (``TrioSocket.bursts``), echo through
the kernel to the trio echo actor from a raw DEALER, and the same call through ``Client.call``.
For each: the p50 round trip, and per call the on-CPU µs of each process's main thread and of
its libzmq I/O threads, from the scheduler's own accounting (``/proc/<pid>/task/*/schedstat``,
exact, unlike the tick-sampled times in ``/proc/<pid>/stat``, which charge a thread that
wakes often for time it did not run). A call's CPU far above the work it does warm (see
bench/wire_micro.py) is the cost of running it with cold caches after every wake-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import messaging as m  # noqa: E402  (the messaging benchmark's deployment and echo pieces)

from specmemo.deploy.local import actor_rows  # noqa: E402
from specmemo.deploy.tiny import tiny_config  # noqa: E402
from specmemo.protocol import Client  # noqa: E402
from specmemo.protocol.trio_zmq import TrioSocket  # noqa: E402
from specmemo.protocol.wire import Command, Header, encode, recv_frames, send_frames  # noqa: E402


def trio_server(endpoint: str) -> None:
    """A ROUTER echo on trio and the library's socket adapter: trio's floor per wake-up."""
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)

    async def serve() -> None:
        ts = TrioSocket(sock)
        async for burst in ts.bursts():
            for frames in burst:
                ts.send_multipart_nowait(frames)

    trio.run(serve)


def plain_server(endpoint: str) -> None:
    """The raw echo written the way pyzmq's documentation does it."""
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    while True:
        sock.send_multipart(sock.recv_multipart())


def on_cpu(pid: int) -> tuple[float, float]:
    """Seconds on a CPU of ``pid``'s main thread and of its libzmq I/O threads."""
    main = io = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            ns = int((task / "schedstat").read_text().split()[0])
            comm = (task / "comm").read_text()
        except OSError:
            continue  # a thread that ended meanwhile
        if comm.startswith("ZMQbg/IO"):
            io += ns / 1e9
        elif task.name == str(pid):
            main += ns / 1e9
    return main, io


def measure(round_trip: Callable[[], object], pids: dict[str, int], seconds: float) -> dict:
    for _ in range(200):
        round_trip()
    before = {name: on_cpu(pid) for name, pid in pids.items()}
    samples = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        round_trip()
        samples.append(time.perf_counter() - t0)
    after = {name: on_cpu(pid) for name, pid in pids.items()}
    n = len(samples)
    return {
        "p50_us": statistics.median(samples) * 1e6,
        "n": n,
        "cpu_us": {name: [(a - b) / n * 1e6 for a, b in zip(after[name], before[name])] for name in pids},
    }


def pin(pids: list[int], cpu: str) -> None:
    for pid in pids:  # -a: every thread, libzmq's I/O threads included
        subprocess.run(["taskset", "-a", "-p", "-c", cpu, str(pid)], check=True, capture_output=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=3.0, help="per path and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--pin", default="", help="run every process on this CPU list (taskset -c)")
    p.add_argument("--trio-server", default=None, help=argparse.SUPPRESS)
    p.add_argument("--plain-server", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.trio_server:
        trio_server(args.trio_server)
        return 0
    if args.plain_server:
        plain_server(args.plain_server)
        return 0
    root = Path(tempfile.mkdtemp(prefix="smw", dir="/tmp"))
    raw_ep, trio_ep = f"ipc://{root}/raw.sock", f"ipc://{root}/trio.sock"
    plain_ep = f"ipc://{root}/plain.sock"
    servers = {
        "raw": subprocess.Popen([sys.executable, m.__file__, "--raw-server", raw_ep]),
        "plain": subprocess.Popen([sys.executable, __file__, "--plain-server", plain_ep]),
        "trio": subprocess.Popen([sys.executable, __file__, "--trio-server", trio_ep]),
    }
    dep, _ = m.start_deployment(tiny_config("bench", ["echo"]), None)
    endpoint = dep.endpoint
    try:
        with Client(endpoint) as client:
            actor = actor_rows(client)["echo"].pid
            if args.pin:
                pin([os.getpid(), dep.proc.pid, actor, *(s.pid for s in servers.values())], args.pin)
            raw, trio_sock, k_sock = m.dealer(raw_ep), m.dealer(trio_ep), m.dealer(endpoint)
            plain = m.dealer(plain_ep)
            small = [b"x" * 20]
            request = encode(
                Command.REQUEST, b"echo", Header(id=1, method="echo", deadline_ms=30000), {"data": m.ECHO_DATA}
            )
            me = os.getpid()
            paths = {
                "raw pyzmq echo (blocking server)": (
                    lambda: (send_frames(raw, small), recv_frames(raw)),
                    {"client": me, "server": servers["raw"].pid},
                ),
                "raw pyzmq echo, send_multipart/recv_multipart": (
                    lambda: (plain.send_multipart(small), plain.recv_multipart()),
                    {"client": me, "server": servers["plain"].pid},
                ),
                "trio echo server (TrioSocket)": (
                    lambda: (send_frames(trio_sock, small), recv_frames(trio_sock)),
                    {"client": me, "server": servers["trio"].pid},
                ),
                "echo via kernel to the trio actor, raw DEALER": (
                    lambda: (send_frames(k_sock, request), recv_frames(k_sock)),
                    {"client": me, "kernel": dep.proc.pid, "actor": actor},
                ),
                "echo.echo, Client.call": (
                    lambda: client.call("echo", "echo", data=m.ECHO_DATA),
                    {"client": me, "kernel": dep.proc.pid, "actor": actor},
                ),
            }
            results: dict[str, list[dict]] = {name: [] for name in paths}
            for r in range(args.rounds):
                for name, (round_trip, pids) in paths.items():
                    results[name].append(measure(round_trip, pids, args.seconds))
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
            for s in (raw, plain, trio_sock, k_sock):
                s.close()
    finally:
        for s in servers.values():
            s.kill()
        dep.cleanup()
    print(
        f"{'pinned to CPU ' + args.pin if args.pin else 'placed by the scheduler'}; "
        f"{os.cpu_count()} CPUs; medians of {args.rounds} rounds of {args.seconds:g} s\n"
    )
    print("| path | p50 µs | on-CPU µs per call: main thread / libzmq I/O threads |")
    print("| --- | ---: | --- |")
    for name, rounds in results.items():
        p50 = statistics.median(x["p50_us"] for x in rounds)
        procs = rounds[0]["cpu_us"].keys()
        cpu = ", ".join(
            f"{proc} {statistics.median(x['cpu_us'][proc][0] for x in rounds):.0f} / "
            f"{statistics.median(x['cpu_us'][proc][1] for x in rounds):.0f}"
            for proc in procs
        )
        print(f"| {name} | {p50:.0f} | {cpu} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
