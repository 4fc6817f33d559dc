"""A real deployment (kernel + echo actor as processes) driven through the SDK and raw sockets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import msgpack
import numpy as np
import pytest
import trio
import zmq
from conftest import ECHO_CONFIG, raw_dealer

from specmemo.deploy.local import pid_alive
from specmemo.protocol import (
    ActorDied,
    AsyncClient,
    BadRequest,
    DeadlineExceeded,
    Internal,
    MessageTooLarge,
    UnknownActor,
    UnknownMethod,
    VersionMismatch,
)
from specmemo.protocol.errors import error_from_wire
from specmemo.protocol.wire import MAGIC, Command, Header, decode, encode


def test_calls_streams_and_arrays_round_trip_through_the_kernel(echo_deployment):
    with echo_deployment.client() as c:
        assert c.ping().pong is True
        a = np.random.default_rng(0).standard_normal((300, 7))
        out = c.call("echo", "echo", data={"a": a, "s": "x", "n": [1, 2]}).data
        assert np.array_equal(out["a"], a) and out["s"] == "x" and out["n"] == [1, 2]
        assert [chunk.i for chunk in c.stream("echo", "count", n=5)] == list(range(5))
        table = {row.name: row for row in c.actors()}
        assert table["echo"].state == "ready" and table["echo"].pid > 0


def test_errors_are_typed_and_the_actor_keeps_serving(echo_deployment):
    with echo_deployment.client() as c:
        with pytest.raises(UnknownActor, match="nobody"):
            c.call("nobody", "echo")
        with pytest.raises(UnknownMethod):
            c.call("echo", "nope")
        with pytest.raises(BadRequest, match="seconds"):
            c.call("echo", "sleep", seconds="long")
        with pytest.raises(Internal) as info:
            c.call("echo", "fail", kind="internal", message="boom")
        assert "RuntimeError: boom" in info.value.traceback and info.value.origin == "echo"
        with pytest.raises(BadRequest, match="refused"):
            c.call("echo", "fail", kind="bad_request", message="refused")
        assert c.call("echo", "echo", data=7).data == 7


def test_a_deadline_stops_the_callee_and_raises_deadline_exceeded(echo_deployment):
    with echo_deployment.client() as c:
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            c.call("echo", "sleep", seconds=30, timeout=0.3)
        assert time.monotonic() - t0 < 2
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the callee dropped the call: nothing in flight
            if next(a for a in c.actors() if a.name == "echo").inflight == 0:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the call stayed in flight after its deadline")
        assert c.call("echo", "echo", data=1).data == 1


def test_a_killed_actor_fails_calls_in_flight_at_once_and_is_restarted(echo_deployment):
    old = echo_deployment.actor_pid("echo")
    result: dict = {}

    def slow_call() -> None:
        with echo_deployment.client() as c:
            t0 = time.monotonic()
            try:
                c.call("echo", "sleep", seconds=30, timeout=20)
            except Exception as exc:
                result["exc"], result["after"] = exc, time.monotonic() - t0

    th = threading.Thread(target=slow_call)
    th.start()
    time.sleep(0.5)
    t_kill = time.monotonic()
    os.kill(old, signal.SIGKILL)
    th.join(10)
    assert isinstance(result.get("exc"), ActorDied)
    assert time.monotonic() - t_kill < 2.0
    with echo_deployment.client() as c:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            row = next(a for a in c.actors() if a.name == "echo")
            if row.state == "ready" and row.pid != old:
                break
            time.sleep(0.05)
        assert row.restarts == 1 and row.pid != old
        assert c.call("echo", "echo", data="back").data == "back"


def test_restart_intensity_exceeded_stops_the_deployment_with_a_clear_message(start_deployment):
    d = start_deployment(ECHO_CONFIG.format(name="fragile", intensity=2), "fragile", ["echo"])
    for _ in range(3):
        try:
            with d.client(timeout=5) as c:
                c.call("echo", "fail", kind="exit")
        except (ActorDied, UnknownActor):
            pass
        deadline = time.monotonic() + 10
        while d.proc.poll() is None and time.monotonic() < deadline:
            try:
                with d.client(timeout=1) as c:
                    if next(a for a in c.actors() if a.name == "echo").state == "ready":
                        break
            except Exception:
                pass
            time.sleep(0.05)
    assert d.proc.wait(20) == 1
    log = d.log.read_text()
    assert "actor 'echo' died 3 times within 30 s" in log
    assert not d.run_dir.exists()


def test_ctrl_c_leaves_no_process_and_no_socket_file(start_deployment):
    d = start_deployment(ECHO_CONFIG.format(name="clean", intensity=5), "clean", ["echo"])
    pid = d.actor_pid("echo")
    sock_file = d.endpoint.removeprefix("ipc://")
    assert os.path.exists(sock_file)
    assert d.stop(signal.SIGINT) == 0
    assert not pid_alive(pid)
    assert not os.path.exists(sock_file) and not d.run_dir.exists()
    assert "stopped" in d.log.read_text()


def test_status_command_prints_the_actor_table(echo_deployment):
    out = subprocess.run(
        [sys.executable, "-m", "specmemo.deploy.cli", "status"],
        env=echo_deployment.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert "NAME" in out.stdout and "echo" in out.stdout and "ready" in out.stdout


def _raw(endpoint: str) -> zmq.Socket:
    return raw_dealer(endpoint, timeout_ms=5000)


@pytest.mark.parametrize(
    "frames, expected",
    [
        ([b"garbage"], BadRequest),
        ([b"a", b"b", b"c", b"d", b"e"], BadRequest),
        ([b"SM\x07", b"\x01", b"echo", msgpack.packb({"id": 5}), b"\xc0"], VersionMismatch),
        ([MAGIC, b"\x63", b"echo", msgpack.packb({"id": 5}), b"\xc0"], BadRequest),
        ([MAGIC, b"\x01", b"echo", b"\xff\xfe", b"\xc0"], BadRequest),
        ([MAGIC, b"\x01", b"echo", msgpack.packb({"id": "x"}), b"\xc0"], BadRequest),
        ([MAGIC, b"\x01", b"echo", msgpack.packb({"id": 5, "m": "echo"}), b"\xc1"], BadRequest),
        (
            [MAGIC, b"\x01", b"echo", msgpack.packb({"id": 5, "m": "sleep"}), msgpack.packb({"seconds": [1]})],
            BadRequest,
        ),
        (
            [
                MAGIC,
                b"\x01",
                b"echo",
                msgpack.packb({"id": 5, "m": "echo"}),
                msgpack.packb({"data": {"$nd": ["<f8", [100], 0]}}),
                b"short",
            ],
            BadRequest,
        ),
        ([MAGIC, b"\x01", b"\xff\xfe", msgpack.packb({"id": 5}), b"\xc0"], BadRequest),
        ([MAGIC, b"\x02", b"somebody", msgpack.packb({"id": 5}), b"\xc0"], None),  # dropped, logged
        ([MAGIC, b"\x01", b"echo", msgpack.packb({"id": 5, "m": "echo", "s": 2}), b"\xc0"], BadRequest),  # schema 2
        ([MAGIC, b"\x05", b"kernel", msgpack.packb({"id": 0}), b"\xc0"], BadRequest),  # HEARTBEAT from a client
        ([MAGIC, b"\x09", b"kernel", msgpack.packb({"id": 0}), b"\xc0"], BadRequest),  # BYE from a client
    ],
)
def test_hostile_frames_get_typed_errors_and_normal_clients_are_still_served(echo_deployment, frames, expected):
    raw = _raw(echo_deployment.endpoint)
    try:
        raw.send_multipart(frames)
        if expected is None:
            assert raw.poll(300) == 0
        else:
            msg = decode(raw.recv_multipart())
            assert msg.command == Command.ERROR
            assert isinstance(error_from_wire(msg.body), expected)
    finally:
        raw.close()
    with echo_deployment.client() as c:
        assert c.call("echo", "echo", data="still here").data == "still here"


def test_oversized_messages_are_refused_with_a_clear_error(start_deployment):
    config = ECHO_CONFIG.format(name="small", intensity=5).replace(
        "stop_timeout_s = 3", "stop_timeout_s = 3\nmax_message_bytes = 65536"
    )
    d = start_deployment(config, "small", ["echo"])
    with d.client(max_message_bytes=65536) as c:
        with pytest.raises(MessageTooLarge, match="exceeds the limit"):
            c.call("echo", "echo", data=np.zeros(20000))
    raw = _raw(d.endpoint)  # a peer that ignores the limit: many frames, each under it
    try:
        body, bufs = msgpack.packb({"data": [{"$nd": ["|u1", [40000], i]} for i in range(3)]}), [b"x" * 40000] * 3
        raw.send_multipart(encode(Command.REQUEST, b"echo", Header(id=9, method="echo"))[:4] + [body, *bufs])
        msg = decode(raw.recv_multipart())
        error = error_from_wire(msg.body)
        assert isinstance(error, MessageTooLarge) and error.detail["limit"] == 65536
        assert error.detail["size"] > 120000 and msg.header.id == 9
    finally:
        raw.close()
    with d.client() as c:
        assert c.call("kernel", "ping").max_message_bytes == 65536
    with d.client() as c:
        assert c.call("echo", "echo", data=1).data == 1


def test_a_client_that_vanishes_mid_call_does_not_disturb_others(echo_deployment):
    raw = _raw(echo_deployment.endpoint)
    raw.send_multipart(encode(Command.REQUEST, b"echo", Header(id=1, method="sleep"), {"seconds": 0.3}))
    raw.close()
    time.sleep(0.6)
    with echo_deployment.client() as c:
        assert c.call("echo", "echo", data=2).data == 2
        assert next(a for a in c.actors() if a.name == "echo").inflight == 0


def test_the_async_client_serves_many_concurrent_calls(echo_deployment):
    async def main() -> list:
        results = []
        async with AsyncClient(echo_deployment.endpoint) as c:

            async def one(i: int) -> None:
                results.append((await c.call("echo", "echo", data=i)).data)

            async with trio.open_nursery() as n:
                for i in range(200):
                    n.start_soon(one, i)
            chunks = [x.i async for x in c.stream("echo", "count", n=3)]
            assert chunks == [0, 1, 2]
        return results

    assert sorted(trio.run(main)) == list(range(200))


def test_a_cancel_naming_another_actor_cancels_nothing(echo_deployment):
    raw = _raw(echo_deployment.endpoint)
    try:
        raw.send_multipart(encode(Command.REQUEST, b"echo", Header(id=7, method="sleep"), {"seconds": 0.3}))
        time.sleep(0.05)
        raw.send_multipart(encode(Command.CANCEL, b"nobody", Header(id=7)))
        msg = decode(raw.recv_multipart())
        assert msg.command == Command.REPLY and msg.header.id == 7  # slept its 0.3 s, not cancelled
        raw.send_multipart(encode(Command.REQUEST, b"echo", Header(id=8, method="sleep"), {"seconds": 5}))
        time.sleep(0.05)
        raw.send_multipart(encode(Command.CANCEL, b"echo", Header(id=8)))
        msg = decode(raw.recv_multipart())
        assert msg.command == Command.ERROR and error_from_wire(msg.body).name == "Cancelled"
    finally:
        raw.close()


def test_a_streaming_method_called_as_a_plain_call_is_a_bad_request_in_both_clients(echo_deployment):
    from specmemo.protocol.errors import BadRequest

    with echo_deployment.client() as c:
        with pytest.raises(BadRequest, match="echo.count streams"):
            c.call("echo", "count", n=3)
        assert c.call("echo", "echo", data=1).data == 1  # the cancelled stream left nothing behind

    async def main() -> None:
        async with AsyncClient(echo_deployment.endpoint) as c:
            with pytest.raises(BadRequest, match="echo.count streams"):
                await c.call("echo", "count", n=3)
            assert (await c.call("echo", "echo", data=2)).data == 2

    trio.run(main)
