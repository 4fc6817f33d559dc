"""Messaging benchmark: a small request through the kernel to an actor and back, against a raw
blocking pyzmq DEALER/ROUTER echo (and Ray actors when Ray is installed), in one run.

    .venv/bin/python bench/messaging.py                    # full run, 3 rounds
    .venv/bin/python bench/messaging.py --quick            # a short run, under a minute
    .venv/bin/python bench/messaging.py --ray-python /tmp/rayenv/bin/python   # Ray from another venv
    .venv/bin/python bench/messaging.py --quick --profile /tmp/prof   # kernel and actor profiled

Paths measured, each round interleaved so that load from other processes falls on all alike:

- raw: a blocking pyzmq DEALER sends one 40-byte frame to a ROUTER echo server in another
  process (one hop, no protocol): the floor for any ZeroMQ messaging in Python;
- kernel.ping: pre-encoded specmemo frames from a raw DEALER, answered by the kernel itself
  (one hop through the kernel's routing loop);
- echo via kernel to a blocking actor: the same frames through the kernel to a minimal actor
  in plain blocking pyzmq (written from docs/protocol.md, body echoed undecoded): the cost of
  the kernel's two hops without the trio actor runtime;
- echo.echo, raw DEALER: pre-encoded frames through the kernel to the echo actor and back
  (two hops, no client SDK); the request is 41 bytes over 5 frames;
- echo.echo, Client.call: the same call through the blocking SDK (encode, validate, decode);
- echo.echo, AsyncClient: throughput of many trio tasks calling concurrently through one client;
- Ray: a Ray actor's `echo` method, called with `ray.get` (latency) and in windows (throughput).

Latency is the p50 and p99 of single round trips; throughput keeps a window of requests in
flight (a new one sent per reply). The large-array rows echo an 8 MB float64 array (raw: one
zero-copy frame; specmemo: `Client.call` with the array as a buffer frame) and report
GB/s = 2 x 8 MB / median round trip. The deployment is `specmemo up` on a config with the
kernel and one echo actor (or --config) in a temporary SPECMEMO_RUN_ROOT, as a subprocess. Writes
bench/results/messaging[-quick].json and .md and prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import trio
import zmq

from specmemo.deploy.local import LocalDeployment, actor_rows
from specmemo.deploy.tiny import tiny_config
from specmemo.protocol import AsyncClient, Client
from specmemo.protocol.wire import Command, Header, encode, recv_frames, send_frames

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
SMALL = b"m" * 40  # the raw echo's message
ECHO_DATA = "hi"  # echo.echo request: 41 bytes in 5 frames
BIG_BYTES = 8 * 1024 * 1024
GOAL_RATIO, GOAL_RATE = 4.0, 20_000

SIZES = {  # latency samples, throughput messages, throughput window, big-array reps
    "full": dict(lat=5000, msgs=30000, window=128, big=30),
    "quick": dict(lat=1000, msgs=6000, window=128, big=8),
}


# ---------------------------------------------------------------- measuring


def latencies_us(round_trip: Callable[[], Any], n: int, warm: int = 200) -> np.ndarray:
    """Round-trip times of ``n`` sequential calls after ``warm`` untimed ones, in µs."""
    for _ in range(warm):
        round_trip()
    out = np.empty(n)
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        round_trip()
        out[i] = clock() - t0
    return out / 1000.0


def summary(samples_us: np.ndarray) -> dict[str, float]:
    return {
        "p50_us": float(np.percentile(samples_us, 50)),
        "p99_us": float(np.percentile(samples_us, 99)),
        "n": int(len(samples_us)),
    }


def windowed_rate(send: Callable[[int], None], recv: Callable[[], int], total: int, window: int) -> float:
    """Messages per second with ``window`` requests in flight: one new request per reply.

    ``send(slot)`` sends request ``slot`` (0 <= slot < window); ``recv()`` waits for one
    reply and returns its slot, which is free again.
    """
    window = min(window, total)
    t0 = time.perf_counter()
    for slot in range(window):
        send(slot)
    sent, done = window, 0
    while done < total:
        slot = recv()
        done += 1
        if sent < total:
            send(slot)
            sent += 1
    return total / (time.perf_counter() - t0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads, libzmq's I/O thread too)."""
    if pid == os.getpid():
        return time.process_time()
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_stats(pid: int) -> tuple[float, int]:
    """CPU seconds of ``pid``'s libzmq I/O threads, and the voluntary context switches (times
    it went to sleep) of all its threads."""
    io, sleeps, tick = 0.0, 0, os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
            if (task / "comm").read_text().startswith("ZMQbg/IO"):
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                io += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            continue  # a thread that ended meanwhile
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches"):
                sleeps += int(line.split()[1])
    return io, sleeps


def metered_rate(pids: dict[str, int], run: Callable[[], float], total: int) -> dict[str, Any]:
    """``run()``'s rate, and per message and process in ``pids``: CPU µs (all threads), the
    part of it in libzmq's I/O thread, and sleeps (voluntary context switches): a process
    woken once per message pays for it in all three."""
    before = {name: (cpu_seconds(pid), *thread_stats(pid)) for name, pid in pids.items()}
    rate = run()
    after = {name: (cpu_seconds(pid), *thread_stats(pid)) for name, pid in pids.items()}
    per = {name: [(a - b) / total for a, b in zip(after[name], before[name])] for name in pids}
    return {
        "rate": rate,
        "cpu_us": {name: v[0] * 1e6 for name, v in per.items()},
        "io_us": {name: v[1] * 1e6 for name, v in per.items()},
        "sleeps": {name: v[2] for name, v in per.items()},
    }


# ---------------------------------------------------------------- raw pyzmq echo


def raw_server(endpoint: str) -> None:
    """A ROUTER that sends every message straight back, written as pyzmq's documentation does
    (``recv_multipart``/``send_multipart``; large frames without a copy). bench/wakeups.py
    measured it against the library's frame functions: equal, or a few µs faster."""
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    while True:
        sock.send_multipart(sock.recv_multipart(copy=False), copy=False)


def raw_round(sock: zmq.Socket, size: dict[str, int], pids: dict[str, int]) -> dict[str, Any]:
    def rt() -> None:
        sock.send(SMALL)
        sock.recv()

    lat = summary(latencies_us(rt, size["lat"]))

    def send(slot: int) -> None:
        sock.send(slot.to_bytes(2, "little") + SMALL[2:])

    def recv() -> int:
        return int.from_bytes(sock.recv()[:2], "little")

    lat.update(metered_rate(pids, lambda: windowed_rate(send, recv, size["msgs"], size["window"]), size["msgs"]))
    return lat


def raw_big(sock: zmq.Socket, reps: int) -> float:
    big = np.ones(BIG_BYTES // 8)

    def rt() -> None:
        sock.send(big, copy=False)
        sock.recv(copy=False)

    return float(np.median(latencies_us(rt, reps, warm=2)))


# ---------------------------------------------------------------- a minimal blocking actor

MAGIC, REQUEST, REPLY, HEARTBEAT, READY, BYE = b"SM\x01", b"\x01", b"\x02", b"\x05", b"\x06", b"\x09"


def blocking_actor(endpoint: str, name: str, heartbeat_s: float) -> None:
    """An echo actor written from docs/protocol.md alone: plain blocking pyzmq, no trio, no schema.

    It registers with READY, answers every REQUEST with its body unchanged (so ``echo.echo``
    works), sends a HEARTBEAT each ``heartbeat_s`` and leaves on BYE. It isolates what the
    kernel's two extra hops cost from what the trio actor runtime costs.
    """
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    ready_header = msgpack.packb({"v": 1, "id": 1, "m": "", "dl": 0, "s": 1})
    sock.send_multipart(
        [
            MAGIC,
            READY,
            name.encode(),
            ready_header,
            msgpack.packb({"kind": "echo", "pid": os.getpid(), "methods": ["echo"]}),
        ]
    )
    beat = [MAGIC, HEARTBEAT, b"", msgpack.packb({"v": 1, "id": 0, "m": "", "dl": 0, "s": 1}), b"\xc0"]
    next_beat = heard = time.monotonic()
    while time.monotonic() - heard < 20 * heartbeat_s:  # the kernel went silent: leave
        if sock.poll(int(heartbeat_s * 1000)):
            frames = sock.recv_multipart(copy=False)
            heard = time.monotonic()
            command = frames[1].bytes
            if command == REQUEST:
                # the reply header needs only the call id; the body goes back untouched
                call_id = msgpack.unpackb(frames[3].bytes)["id"]
                header = msgpack.packb({"v": 1, "id": call_id, "m": "", "dl": 0, "s": 1})
                sock.send_multipart([MAGIC, REPLY, frames[2], header, *frames[4:]], copy=False)
            elif command == BYE:
                break
        if time.monotonic() >= next_beat:
            sock.send_multipart(beat)
            next_beat = time.monotonic() + heartbeat_s
    sock.send_multipart([MAGIC, BYE, name.encode(), beat[3], b"\xc0"])
    sock.close()


# ---------------------------------------------------------------- through the kernel


# Runs a module under cProfile with a CPU-time clock of the main thread, so that time spent
# descheduled on a busy machine is not charged to whatever call was running.
PROFILED = r"""
import cProfile, runpy, sys, time
out, module = sys.argv[1], sys.argv[2]
sys.argv = [module] + sys.argv[3:]
prof = cProfile.Profile(time.thread_time)
try:
    prof.runcall(runpy.run_module, module, run_name="__main__", alter_sys=True)
except SystemExit:
    pass
finally:
    prof.dump_stats(out)
"""


def start_deployment(config: str | Path, profile: Path | None) -> tuple[LocalDeployment, subprocess.Popen | None]:
    """Start ``specmemo up`` and wait for its echo actor; returns (deployment, actor).

    With ``profile``, the kernel runs under cProfile on a config without actors, and the echo
    actor is started here, also profiled, and registers itself (as an external actor would).
    """
    if profile is None:
        dep = LocalDeployment(config, prefix="smb")
        return _ready(dep, ["echo"]), None
    profile.mkdir(parents=True, exist_ok=True)
    dep = LocalDeployment(
        '[deployment]\nname = "bench"\n',
        prefix="smb",
        runner=(sys.executable, "-c", PROFILED, str(profile / "kernel.prof")),
    )
    _ready(dep, [])
    actor = subprocess.Popen(
        [
            sys.executable,
            "-c",
            PROFILED,
            str(profile / "actor.prof"),
            "specmemo.actors.run",
            "--name",
            "echo",
            "--kind",
            "echo",
            "--endpoint",
            dep.endpoint,
        ],
        stdout=(dep.root / "actor.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        return _ready(dep, ["echo"]), actor
    except BaseException:
        actor.terminate()
        raise


def _ready(dep: LocalDeployment, actors: list[str]) -> LocalDeployment:
    try:
        return dep.wait_ready(actors, timeout=120, accept=("ready", "external"))
    except BaseException:
        dep.cleanup()
        raise


def dealer(endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def frames_round(
    sock: zmq.Socket, route: bytes, method: str, body: Any, size: dict[str, int], pids: dict[str, int] | None = None
) -> dict[str, Any]:
    """Latency (and windowed throughput) of pre-encoded requests sent from a raw DEALER."""
    one = encode(Command.REQUEST, route, Header(id=1, method=method, deadline_ms=30000), body)

    # The library's own frame I/O (what the SDK and the actors use); pyzmq's send_multipart and
    # recv_multipart wrappers cost several µs a frame more.
    def rt() -> None:
        send_frames(sock, one)
        reply = recv_frames(sock)
        if reply[1] != b"\x02":
            raise RuntimeError(f"{route.decode()}.{method} failed: {msgpack.unpackb(reply[4])}")

    out = summary(latencies_us(rt, size["lat"]))
    if pids is not None:
        requests = [
            encode(Command.REQUEST, route, Header(id=slot + 1, method=method, deadline_ms=30000), body)
            for slot in range(size["window"])
        ]
        errors = []

        def send(slot: int) -> None:
            send_frames(sock, requests[slot])

        def recv() -> int:
            reply = recv_frames(sock)
            if reply[1] != b"\x02":
                errors.append(msgpack.unpackb(reply[4]))
            return msgpack.unpackb(reply[3])["id"] - 1

        out.update(metered_rate(pids, lambda: windowed_rate(send, recv, size["msgs"], size["window"]), size["msgs"]))
        if errors:
            raise RuntimeError(f"{len(errors)} calls failed in the throughput run, e.g. {errors[0]}")
    return out


def client_round(client: Client, size: dict[str, int]) -> dict[str, Any]:
    def rt() -> None:
        client.call("echo", "echo", data=ECHO_DATA)

    return summary(latencies_us(rt, size["lat"]))


def async_client_rate(endpoint: str, total: int, tasks: int, client_cls: type = AsyncClient) -> float:
    """Calls per second of ``tasks`` trio tasks sharing one ``client_cls`` (``total`` echo calls)."""

    async def main() -> float:
        left = total
        async with client_cls(endpoint) as c:

            async def worker() -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    reply = await c.call("echo", "echo", data=ECHO_DATA)
                    assert reply.data == ECHO_DATA

            for _ in range(50):
                await c.call("echo", "echo", data=ECHO_DATA)
            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(tasks):
                    nursery.start_soon(worker)
            return total / (time.perf_counter() - t0)

    return trio.run(main)


def kernel_big(client: Client, reps: int) -> float:
    big = np.random.default_rng(0).standard_normal(BIG_BYTES // 8)
    back = client.call("echo", "echo", data=big).data
    if not np.array_equal(back, big):
        raise RuntimeError("the 8 MB echo came back different")

    def rt() -> None:
        client.call("echo", "echo", data=big)

    return float(np.median(latencies_us(rt, reps, warm=2)))


# ---------------------------------------------------------------- Ray (its own interpreter)

RAY_WORKER = r"""
import json, sys, time
import numpy as np
import ray

cfg = json.loads(sys.argv[1])
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)

@ray.remote
class Echo:
    def echo(self, x):
        return x

a = Echo.remote()
msg = b"m" * 40
ray.get([a.echo.remote(msg) for _ in range(200)])
rounds = []
for _ in range(cfg["rounds"]):
    lat = np.empty(cfg["lat"])
    for i in range(cfg["lat"]):
        t0 = time.perf_counter_ns()
        ray.get(a.echo.remote(msg))
        lat[i] = time.perf_counter_ns() - t0
    lat /= 1000.0
    t0 = time.perf_counter()
    refs, sent, done = [a.echo.remote(msg) for _ in range(cfg["window"])], cfg["window"], 0
    while done < cfg["msgs"]:
        ready, refs = ray.wait(refs, num_returns=1)
        ray.get(ready)
        done += 1
        if sent < cfg["msgs"]:
            refs.append(a.echo.remote(msg))
            sent += 1
    rate_window = cfg["msgs"] / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(cfg["msgs"] // cfg["window"]):
        ray.get([a.echo.remote(msg) for _ in range(cfg["window"])])
    rate_batch = cfg["msgs"] // cfg["window"] * cfg["window"] / (time.perf_counter() - t0)
    rounds.append({"p50_us": float(np.percentile(lat, 50)), "p99_us": float(np.percentile(lat, 99)),
                   "n": len(lat), "rate": max(rate_window, rate_batch), "rate_window": rate_window,
                   "rate_batch": rate_batch})
print("RESULT " + json.dumps({"rounds": rounds, "version": ray.__version__}))
ray.shutdown()
"""


def run_ray(python: str, size: dict[str, int], rounds: int) -> dict[str, Any]:
    """Ray numbers from ``python`` (which must import ray), or the reason they are missing."""
    cfg = {"lat": min(size["lat"], 2000), "msgs": min(size["msgs"], 10000), "window": size["window"], "rounds": rounds}
    try:
        out = subprocess.run([python, "-c", RAY_WORKER, json.dumps(cfg)], capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"skipped": f"Ray run failed: {exc}"}
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
    return {
        "skipped": f"Ray not available with {python} ({tail[0][:160]}); install it "
        f"(`pip install ray`) or pass --ray-python"
    }


def print_profiles(where: Path, top: int = 18) -> None:
    """The costliest functions of the kernel and the actor (CPU time of their main threads)."""
    import io
    import pstats

    for name in ("kernel", "actor"):
        text = io.StringIO()
        pstats.Stats(str(where / f"{name}.prof"), stream=text).sort_stats("tottime").print_stats(top)
        (where / f"{name}.txt").write_text(text.getvalue())
        print(f"== {name} (cProfile, thread CPU time; also in {where / name}.txt)\n{text.getvalue()}")


# ---------------------------------------------------------------- the run


def median_of(rounds: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in rounds))


def table(res: dict[str, Any]) -> str:
    raw = res["paths"]["raw"]
    base_p50, base_rate = median_of(raw, "p50_us"), median_of(raw, "rate")
    lines = [
        "| path | p50 µs | p99 µs | p50 / raw | msgs/s pipelined | rate / raw |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, key in [
        ("raw pyzmq DEALER/ROUTER echo (1 hop)", "raw"),
        ("kernel.ping, raw DEALER (1 hop, kernel only)", "ping"),
        ("echo via kernel to a blocking pyzmq actor, raw DEALER", "echo_blocking"),
        ("echo.echo via kernel to the trio echo actor, raw DEALER", "echo_frames"),
        ("echo.echo, blocking Client.call", "echo_client"),
        ("echo.echo, AsyncClient", "echo_async"),
        ("Ray actor method", "ray"),
    ]:
        rounds = res["paths"].get(key)
        if not rounds:
            continue
        cells = [label]
        if "p50_us" in rounds[0]:
            p50 = median_of(rounds, "p50_us")
            cells += [f"{p50:.0f}", f"{median_of(rounds, 'p99_us'):.0f}", f"{p50 / base_p50:.2f}x"]
        else:
            cells += ["", "", ""]
        if "rate" in rounds[0]:
            rate = median_of(rounds, "rate")
            cells += [f"{rate:,.0f}", f"{rate / base_rate:.2f}x"]
        else:
            cells += ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    cpu = [
        "",
        "CPU time per message while pipelining (µs, all threads of each process; in brackets "
        "the part spent in libzmq's I/O thread, and the times the process slept and was "
        "woken per message):",
        "",
    ]
    for label, key in [
        ("raw echo", "raw"),
        ("via kernel to the blocking actor", "echo_blocking"),
        ("via kernel to the trio echo actor", "echo_frames"),
    ]:
        rounds = res["paths"][key]

        def med(field: str, name: str) -> float:
            return statistics.median(r.get(field, {}).get(name, float("nan")) for r in rounds)

        cpu.append(
            f"- {label}: "
            + ", ".join(
                f"{name} {med('cpu_us', name):.0f} (I/O {med('io_us', name):.0f}; {med('sleeps', name):.2f})"
                for name in rounds[0]["cpu_us"]
            )
        )
    lines += cpu
    big = res["big"]
    lines += [
        "",
        "| 8 MB float64 echo | median round trip ms | GB/s (2 x 8 MB / round trip) |",
        "| --- | ---: | ---: |",
    ]
    for label, key in [
        ("raw pyzmq, one zero-copy frame", "raw"),
        ("echo.echo through the kernel, Client.call", "kernel"),
    ]:
        us = float(statistics.median(big[key]))
        lines.append(f"| {label} | {us / 1000:.2f} | {2 * BIG_BYTES / us / 1000:.2f} |")
    p50 = median_of(res["paths"]["echo_client"], "p50_us")
    rate = max(median_of(res["paths"][k], "rate") for k in ("echo_frames", "echo_async"))
    lines += [
        "",
        f"Goals: p50 through the kernel (Client.call) {p50 / base_p50:.2f}x raw "
        f"(goal <= {GOAL_RATIO:.0f}x): {'met' if p50 / base_p50 <= GOAL_RATIO else 'MISSED'}; "
        f"pipelined {rate:,.0f} msgs/s (goal >= {GOAL_RATE:,}): "
        f"{'met' if rate >= GOAL_RATE else 'MISSED'}.",
    ]
    if "ray_note" in res:
        lines.append(f"Ray: {res['ray_note']}")
    return "\n".join(lines)


def _commit() -> str:
    """The commit the results belong to (with "+dirty" when the tree has changes)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer samples and one round")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, quick 1)")
    p.add_argument(
        "--config",
        default=None,
        help="deployment config with an actor named echo (default: the kernel and "
        "one echo actor, nothing else competing for the CPUs)",
    )
    p.add_argument("--tasks", type=int, default=64, help="concurrent AsyncClient tasks")
    p.add_argument("--ray-python", default=sys.executable, help="interpreter that imports ray ('' skips Ray)")
    p.add_argument("--profile", type=Path, default=None, help="write kernel.prof (cProfile) here")
    p.add_argument("--raw-server", default=None, help=argparse.SUPPRESS)
    p.add_argument("--blocking-actor", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.raw_server:
        raw_server(args.raw_server)
        return 0
    if args.blocking_actor:
        blocking_actor(args.blocking_actor, "blocking", 0.25)
        return 0
    mode = "quick" if args.quick else "full"
    size = SIZES[mode]
    rounds = args.rounds or (1 if args.quick else 3)
    root = Path(tempfile.mkdtemp(prefix="smb", dir="/tmp"))
    raw_ep = f"ipc://{root}/raw.sock"
    server = subprocess.Popen([sys.executable, __file__, "--raw-server", raw_ep])
    blocking = None
    # The default deployment: deploy/tiny.toml's settings, with only the echo actor.
    config = Path(args.config) if args.config else tiny_config("bench", ["echo"])
    try:
        dep, own_actor = start_deployment(config, args.profile)
    except BaseException:
        server.terminate()
        raise
    endpoint = dep.endpoint
    res: dict[str, Any] = {
        "mode": mode,
        "rounds": rounds,
        "size": size,
        "tasks": args.tasks,
        "config": args.config or "kernel + echo",
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg(),
        "commit": _commit(),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "versions": {
            "python": sys.version.split()[0],
            "pyzmq": zmq.__version__,
            "libzmq": zmq.zmq_version(),
            "msgpack": msgpack.version,
            "trio": trio.__version__,
        },
        "paths": {k: [] for k in ("raw", "ping", "echo_blocking", "echo_frames", "echo_client", "echo_async")},
        "big": {"raw": [], "kernel": []},
    }
    try:
        raw_sock, k_sock = dealer(raw_ep), dealer(endpoint)
        blocking = subprocess.Popen([sys.executable, __file__, "--blocking-actor", endpoint])
        dep.wait_ready(["blocking"], timeout=30, accept=("ready", "external"))
        with Client(endpoint) as client:
            actor_pid = actor_rows(client)["echo"].pid
            for r in range(rounds):
                paths = res["paths"]
                paths["raw"].append(raw_round(raw_sock, size, {"client": os.getpid(), "server": server.pid}))
                paths["ping"].append(frames_round(k_sock, b"kernel", "ping", None, size))
                paths["echo_frames"].append(
                    frames_round(
                        k_sock,
                        b"echo",
                        "echo",
                        {"data": ECHO_DATA},
                        size,
                        {"client": os.getpid(), "kernel": dep.proc.pid, "actor": actor_pid},
                    )
                )
                paths["echo_blocking"].append(
                    frames_round(
                        k_sock,
                        b"blocking",
                        "echo",
                        {"data": ECHO_DATA},
                        size,
                        {"client": os.getpid(), "kernel": dep.proc.pid, "actor": blocking.pid},
                    )
                )
                paths["echo_client"].append(client_round(client, size))
                paths["echo_async"].append({"rate": async_client_rate(endpoint, size["msgs"], args.tasks)})
                res["big"]["raw"].append(raw_big(raw_sock, size["big"]))
                res["big"]["kernel"].append(kernel_big(client, size["big"]))
                print(
                    f"round {r + 1}/{rounds}: raw p50 {paths['raw'][-1]['p50_us']:.0f} µs, "
                    f"Client.call p50 {paths['echo_client'][-1]['p50_us']:.0f} µs, "
                    f"pipelined {paths['echo_frames'][-1]['rate']:,.0f}/s",
                    file=sys.stderr,
                )
        raw_sock.close()
        k_sock.close()
    finally:
        server.kill()  # stateless, and may sit in a zero-copy send
        if blocking is not None:
            blocking.terminate()
        dep.stop(timeout=60)
        server.wait()
        for proc in (own_actor, blocking):
            if proc is not None:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        dep.cleanup()
    if args.profile is not None:
        print_profiles(args.profile)
    if args.ray_python:
        ray = run_ray(args.ray_python, size, rounds)
        if "rounds" in ray:
            res["paths"]["ray"] = ray["rounds"]
            res["ray_note"] = (
                f"Ray {ray['version']}, one actor, ray.init(num_cpus=2); its rate is the "
                f"better of a window of {size['window']} calls kept in flight with "
                f"ray.wait and batches of {size['window']} with ray.get."
            )
        else:
            res["ray_note"] = ray["skipped"]
    else:
        res["ray_note"] = "skipped (--ray-python '')"
    res["load_after"] = os.getloadavg()
    text = table(res)
    where = args.profile if args.profile is not None else RESULTS  # profiled timings are not results
    where.mkdir(parents=True, exist_ok=True)
    stem = "messaging-quick" if args.quick else "messaging"
    (where / f"{stem}.json").write_text(json.dumps(res, indent=1))
    command = (
        "bench/messaging.py"
        + (" --quick" if args.quick else "")
        + (f" --rounds {args.rounds}" if args.rounds else "")
        + (f" --config {args.config}" if args.config else "")
        + (f" --ray-python {shlex.quote(args.ray_python)}" if args.ray_python != sys.executable else "")
    )
    (where / f"{stem}.md").write_text(
        f"`.venv/bin/python {command}` at {res['commit']}, {res['started']} ({rounds} round(s), "
        f"medians; {os.cpu_count()} CPUs, "
        f"load average {res['load_before'][0]:.1f} before, {res['load_after'][0]:.1f} after)\n\n" + text + "\n"
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
