"""Microbenchmarks behind the messaging hot path's choices (docs/benchmarks.md, docs/decisions.md).

    .venv/bin/python bench/wire_micro.py

Each line is the median of 5 runs of N operations on an ipc PAIR inside this process:

- a receive + send of a 6-frame message (as the kernel's ROUTER sees one: identity + the
  5-frame envelope) against the same bytes in 3 frames: what a two-frame envelope would save
  the kernel per message;
- receiving a 5-frame message asking the socket for RCVMORE (pyzmq builds an option enum per
  call) against reading ``Frame.more`` (what ``wire.recv_frames`` does);
- a non-blocking receive on an empty socket (pyzmq raises ``zmq.Again``) against reading
  ``EVENTS``: the cost of finding a queue empty;
- what a wait in the trio socket adapter used to cost: entering and leaving a trio cancel scope,
  and ``events & zmq.POLLIN`` on pyzmq's ``IntFlag`` against the same on ints;
- the actor runtime's Python for one ``echo.echo`` request, warm: decode, validate, call the
  handler, encode the reply and hand it to the socket (a stub that drops it). bench/wakeups.py
  shows what the same work costs with cold caches, once per wake-up.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import zmq
import zmq.backend

from specmemo.protocol.wire import recv_frames, send_frames

N = 20_000
HEADER = b"\x85\xa1v\x01\xa2id\x05\xa1m\xa4echo\xa2dl\x00\xa1s\x01"
SIX = [b"ident", b"SM\x01", b"\x01", b"echo", HEADER, b"\x81\xa4data\xa2hi"]
THREE = [b"ident", b"\x95\xa3SM\x01\x01\xa4echo" + HEADER, b"\x81\xa4data\xa2hi"]


def pair() -> tuple[zmq.Socket, zmq.Socket]:
    ctx = zmq.Context.instance()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    for s in (a, b):
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{tempfile.mkdtemp()}/micro.sock"
    a.bind(endpoint)
    b.connect(endpoint)
    return a, b


def fill(sock: zmq.Socket, frames: list[bytes]) -> None:
    for _ in range(N):
        send_frames(sock, frames)
    time.sleep(0.3)  # let the I/O threads move everything to the receiving side


def per_op_us(op, before=lambda: None, after=lambda: None) -> float:
    """Median over 5 runs of the µs per call of ``op()`` (N calls a run; ``before`` and
    ``after`` each run, untimed)."""
    samples = []
    for _ in range(5):
        before()
        t0 = time.perf_counter()
        for _ in range(N):
            op()
        samples.append((time.perf_counter() - t0) / N * 1e6)
        after()
    return statistics.median(samples)


def receive_with_rcvmore(sock: zmq.Socket) -> list[bytes]:
    recv, get, more = zmq.backend.Socket.recv, zmq.backend.Socket.get, int(zmq.RCVMORE)
    frames = [recv(sock, 0, True, False)]
    while get(sock, more):
        frames.append(recv(sock, 0, True, False))
    return frames


_POLLIN = int(zmq.POLLIN)


def trio_cancel_scope_us() -> float:
    import trio

    def op() -> None:
        with trio.CancelScope():
            pass

    async def run() -> float:
        return per_op_us(op)

    return trio.run(run)


def actor_dispatch_us() -> float:
    """µs per request through ``ActorRuntime._dispatch`` and ``_flush`` with a socket stub,
    inside trio (the runtime reads trio's clock); median of 5 runs of N."""
    import trio

    from specmemo.actors.echo import EchoActor
    from specmemo.actors.runtime import ActorRuntime
    from specmemo.protocol.wire import Command, Header, encode

    class Dropping:
        def send_multipart_nowait(self, frames: list) -> None:
            pass

    runtime = ActorRuntime(EchoActor("echo", {}), "inproc://unused")
    runtime.sock = Dropping()
    header = Header(id=7, method="echo", deadline_ms=30000)
    request = [bytes(f) for f in encode(Command.REQUEST, b"c-1", header, {"data": "x" * 16})]

    def op() -> None:
        runtime._dispatch(request)
        runtime._flush()

    async def run() -> float:
        return per_op_us(op)

    return trio.run(run)


def main() -> None:
    a, b = pair()

    def drain_echoes() -> None:
        for _ in range(N):
            recv_frames(a)

    for label, frames in [("6 frames", SIX), ("3 frames", THREE)]:
        us = per_op_us(lambda: send_frames(b, recv_frames(b, 0, 6)), lambda: fill(a, frames), drain_echoes)
        print(f"receive + send, {label}: {us:.2f} µs")
    rcvmore = per_op_us(lambda: receive_with_rcvmore(b), lambda: fill(a, SIX[1:]))
    dot_more = per_op_us(lambda: recv_frames(b, 0, 5), lambda: fill(a, SIX[1:]))
    print(f"5-frame receive, getsockopt(RCVMORE): {rcvmore:.2f} µs; Frame.more: {dot_more:.2f} µs")
    recv, get, events = zmq.backend.Socket.recv, zmq.backend.Socket.get, int(zmq.EVENTS)

    def empty_receive() -> None:
        try:
            recv(b, zmq.NOBLOCK, True, False)
        except zmq.Again:
            pass

    print(
        f"empty queue, failed receive (zmq.Again): {per_op_us(empty_receive):.2f} µs; "
        f"EVENTS read: {per_op_us(lambda: get(b, events)):.2f} µs"
    )
    print(
        f"trio cancel scope entered and left: {trio_cancel_scope_us():.2f} µs; "
        f"events & POLLIN on IntFlag: {per_op_us(lambda: 3 & zmq.POLLIN):.2f} µs, "
        f"on int: {per_op_us(lambda: 3 & _POLLIN):.2f} µs"
    )
    print(f"actor runtime, one echo request dispatched and answered (no socket): {actor_dispatch_us():.2f} µs")
    print(f"(pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}, {os.cpu_count()} CPUs, N = {N})")


if __name__ == "__main__":
    main()
