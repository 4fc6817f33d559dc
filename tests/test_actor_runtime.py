"""The actor runtime's two paths: plain ``def`` handlers answered inline as the queue drains,
``async def`` handlers in tasks of their own. A burst that lands in the actor's queue at once
must get exactly one right reply per call, whichever path served it."""
from __future__ import annotations

import zmq

from specmemo.protocol.errors import error_from_wire
from specmemo.protocol.wire import Command, Header, decode, encode, recv_frames, send_frames


def _burst(i: int) -> tuple[str, dict]:
    kind = i % 4
    if kind == 0:
        return "fail", {"kind": "bad_request", "message": f"no {i}"}   # inline, raises
    if kind == 1:
        return "sleep", {"seconds": 0.001}                              # a task
    return "echo", {"data": [i, "x" * (i % 7)]}                          # inline


def test_a_burst_of_inline_and_task_calls_gets_one_right_reply_each(echo_deployment):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(echo_deployment.endpoint)
    n = 600
    try:
        # All sent before any reply is read: the actor finds hundreds queued at one wake-up.
        for i in range(n):
            method, params = _burst(i)
            send_frames(sock, encode(Command.REQUEST, b"echo", Header(id=i + 1, method=method,
                                                                      deadline_ms=30000), params))
        seen: dict[int, object] = {}
        while len(seen) < n:
            assert sock.poll(30000), f"only {len(seen)} of {n} replies came back"
            msg = decode(recv_frames(sock))
            call = msg.header.id - 1
            assert call not in seen, f"call {call} answered twice"
            method, params = _burst(call)
            if method == "fail":
                assert msg.command == Command.ERROR
                err = error_from_wire(msg.body)
                assert err.name == "BadRequest" and err.message == f"no {call}", err
            else:
                assert msg.command == Command.REPLY, (call, msg.body)
                if method == "echo":
                    assert msg.body["data"] == params["data"]
                else:
                    assert msg.body["slept"] >= 0.001
            seen[call] = msg.body
        assert not sock.poll(200), "a reply came back that no call asked for"
    finally:
        sock.close()
    with echo_deployment.client() as c:   # and the actor goes on serving, nothing left in flight
        assert c.call("echo", "echo", data="after")["data"] == "after"
        assert next(a for a in c.actors() if a["name"] == "echo")["inflight"] == 0


def test_with_kernel_coalescing_on_every_pipelined_call_comes_back_once(start_deployment):
    from conftest import ECHO_CONFIG
    from specmemo.deploy import soak

    config = ECHO_CONFIG.format(name="coal", intensity=20).replace(
        "stop_timeout_s = 3", "stop_timeout_s = 3\ncoalesce_us = 300")
    d = start_deployment(config, "coal", ["echo"])
    report = soak.pipelined_echo(d.endpoint, 3000, window=64)
    assert (report.answered, report.lost, report.duplicated, report.wrong) == (3000, 0, 0, 0)
    with d.client() as c:   # one call in flight: no coalescing wait on its path
        assert c.call("echo", "echo", data="one")["data"] == "one"
