"""Hostile frames against a deployment: malformed messages that must each get one typed error
(or be dropped, where the protocol says so), never a crash or an untyped answer.

- :func:`hostile_frames`: a seeded generator of malformed messages, each marked answered or not;
- :func:`fuzz`: send them from a raw DEALER and count the typed errors that come back.
"""

from __future__ import annotations

import dataclasses
import itertools
import typing
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import zmq

from specmemo.protocol import errors
from specmemo.protocol.methods import METHODS
from specmemo.protocol.schema import from_wire
from specmemo.protocol.wire import Command, Header, decode, encode


def _request(route: bytes, call_id: int, method: str, body: Any = None) -> list[bytes]:
    return [bytes(f) for f in encode(Command.REQUEST, route, Header(id=call_id, method=method), body)]


def _wrong_bodies() -> list[tuple[str, str, dict[str, Any]]]:
    """(kind, method, body) where a required field has a value of the wrong type."""
    wrong_values = [12345, "x", [1, "a"], {"k": None}, 2.5, True, b"\x00"]
    out = []
    for name, spec in sorted(METHODS.items()):
        kind, _, method = name.partition(".")
        if kind == "kernel":
            continue
        hints = typing.get_type_hints(spec.request)
        for f in dataclasses.fields(spec.request):
            if (
                f.default is not dataclasses.MISSING
                or f.default_factory is not dataclasses.MISSING
                or hints[f.name] is Any
            ):
                continue
            for value in wrong_values:
                body = {f.name: value}
                try:
                    from_wire(spec.request, body)
                except errors.BadRequest:
                    out.append((kind, method, body))
    return out


def hostile_frames(seed: int, count: int, actors: dict[str, str]) -> Iterator[tuple[list[bytes], bool, str]]:
    """``count`` malformed messages: (frames, answered, label). ``answered``: the kernel or the
    actor must send back exactly one typed error; otherwise the message is dropped silently.

    ``actors`` maps each actor name of the deployment to its kind. Nothing generated here is a
    valid call that could change an actor's state.
    """
    rng = np.random.default_rng(seed)
    routes = sorted(actors)
    wrong = [(n, m, b) for n in routes for k, m, b in _wrong_bodies() if k == actors[n]]
    ids = iter(range(1, 1 << 62))

    def rand(lo: int, hi: int) -> bytes:
        return rng.bytes(int(rng.integers(lo, hi)))

    def pick(seq: Any) -> Any:
        return seq[int(rng.integers(len(seq)))]

    def array_spec() -> tuple[list[Any], list[bytes]]:
        case = int(rng.integers(7))
        if case == 0:  # a huge declared size, no buffer
            return ["<f8", [int(rng.integers(1 << 30, 1 << 47))], 0], []
        if case == 1:  # a buffer that does not match its shape
            n = int(rng.integers(1, 200))
            return ["<f4", [n + int(rng.integers(1, 9))], 0], [rng.bytes(4 * n)]
        if case == 2:  # a shape whose int64 product wraps around to the buffer's size
            return ["<f8", [1 << 32, 1 << 32], b""], []
        if case == 3:
            return [pick(["|O", ">f8", "<c16", "V8", "x"]), [2], b"\x00" * 16], []
        if case == 4:
            return ["<i8", [2], int(rng.integers(1, 9))], [b"\x00" * 16][: int(rng.integers(2))]
        if case == 5:
            return ["<i8", [-1, 2], b""], []
        return ["<i8", [1] * 9, b"\x00" * 8], []

    for _ in range(count):
        route = pick(routes).encode()
        cid = next(ids)
        case = int(rng.integers(17))
        if case == 0:
            yield [rand(0, 40) for _ in range(int(rng.integers(1, 4)))], True, "random frames"
        elif case == 1:
            yield _request(route, cid, "echo", {"data": 1})[: int(rng.integers(1, 5))], True, "truncated"
        elif case == 2:
            magic = rand(0, 6)
            if magic[:2] == b"SM":
                magic = b"XX" + magic[2:]
            yield [magic, *_request(route, cid, "echo")[1:]], True, "bad magic"
        elif case == 3:
            version = pick([0, 2, 7, 255])
            yield [b"SM" + bytes([version]), *_request(route, cid, "echo")[1:]], True, "bad version"
        elif case == 4:
            cmd = pick([b"", b"\x00", b"\x0b", b"\xff", b"\x01\x01"])
            frames = _request(route, cid, "echo")
            yield [frames[0], cmd, *frames[2:]], True, "bad command"
        elif case == 5:
            frames = _request(route, cid, "echo")
            yield [*frames[:3], b"\xc1" + rand(0, 20), *frames[4:]], True, "bad header msgpack"
        elif case == 6:
            header = pick(
                [{"id": "x"}, {"id": -1}, {"id": 1.5}, {"m": 5}, {"dl": -3}, {"s": "a"}, [1, 2], "text", {"id": True}]
            )
            frames = _request(route, cid, "echo")
            yield [*frames[:3], msgpack.packb(header), *frames[4:]], True, "header of wrong types"
        elif case == 7:
            yield _request(b"nobody-" + rand(1, 6).hex().encode(), cid, "echo"), True, "unknown actor"
        elif case == 8:
            yield _request(b"\xff\xfe" + rand(0, 4), cid, "echo"), True, "route not utf-8"
        elif case == 9:
            yield _request(route, cid, "no_such_" + rand(1, 4).hex()), True, "unknown method"
        elif case == 10:
            name, method, body = pick(wrong)
            yield _request(name.encode(), cid, method, body), True, "body of wrong types"
        elif case == 11:
            name = pick(routes)
            method = pick([n.partition(".")[2] for n in METHODS if n.startswith(actors[name] + ".")])
            frames = _request(name.encode(), cid, method)
            body = pick(
                [
                    b"\xc1" + rand(0, 30),
                    msgpack.packb([1, 2]),
                    msgpack.packb("s"),
                    msgpack.packb(7),
                    b"\x91" * 2000 + b"\xc0",
                    msgpack.packb({}) + b"\x00",
                ]
            )
            yield [*frames[:4], body], True, "bad body msgpack"
        elif case == 12:
            spec, buffers = array_spec()
            frames = _request(b"echo" if "echo" in actors else route, cid, "echo")
            body = msgpack.packb({"data": {"$nd": spec}}, use_bin_type=True)
            yield [*frames[:4], body, *buffers], True, "bad array"
        elif case == 13:
            frames = [bytes(f) for f in encode(Command.CANCEL, route, Header(id=int(rng.integers(1 << 40))))]
            yield frames, False, "cancel of an unknown id"
        elif case == 14:
            # answers from a client are dropped; HEARTBEAT and BYE (actor commands) get BadRequest
            cmd = pick([Command.REPLY, Command.STREAM, Command.END, Command.HEARTBEAT, Command.BYE])
            frames = [bytes(f) for f in encode(cmd, b"c-" + rand(1, 6).hex().encode(), Header(id=cid))]
            yield frames, cmd in (Command.HEARTBEAT, Command.BYE), "actor command from a client"
        elif case == 15:
            body = pick([b"\xc1", msgpack.packb({"kind": "x"}), msgpack.packb({"kind": "echo", "pid": 1})])
            frames = [bytes(f) for f in encode(Command.READY, route, Header(id=cid))]
            yield [*frames[:4], body], True, "READY under a supervised name"
        else:
            frames = [bytes(f) for f in encode(Command.NOTICE, route, Header(id=cid), {"event": "x"})]
            yield frames, True, "NOTICE from a client"


@dataclass
class FuzzReport:
    sent: int = 0
    expected_replies: int = 0
    replies: int = 0
    not_errors: int = 0  # replies that were not ERROR
    errors: Counter = field(default_factory=Counter)  # typed errors received, by name
    labels: Counter = field(default_factory=Counter)


def fuzz(
    endpoint: str, seed: int, count: int, actors: dict[str, str], *, batch: int = 200, drain_s: float = 5.0
) -> FuzzReport:
    """Send ``count`` hostile messages from one raw DEALER in batches; collect every answer."""
    report = FuzzReport()
    sock: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(endpoint)
    try:
        frames_iter = hostile_frames(seed, count, actors)
        while True:
            chunk = list(itertools.islice(frames_iter, batch))
            for frames, answered, label in chunk:
                sock.send_multipart(frames)
                report.sent += 1
                report.expected_replies += answered
                report.labels[label] += 1
            _drain(sock, report, report.expected_replies, drain_s)
            if len(chunk) < batch:
                break
        _drain(sock, report, report.expected_replies + 1, 0.3)  # nothing more may come
    finally:
        sock.close()
    return report


def _drain(sock: zmq.Socket, report: FuzzReport, until: int, quiet_s: float) -> None:
    while report.replies < until and sock.poll(int(quiet_s * 1000)):
        try:
            msg = decode(sock.recv_multipart())
        except errors.SpecmemoError:
            report.not_errors += 1
            report.replies += 1
            continue
        report.replies += 1
        if msg.command != Command.ERROR:
            report.not_errors += 1
            continue
        report.errors[errors.error_from_wire(msg.body).name] += 1
