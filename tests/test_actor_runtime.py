"""The actor runtime's two paths: plain ``def`` handlers answered inline as the queue drains,
``async def`` handlers in tasks of their own. A burst that lands in the actor's queue at once
must get exactly one right reply per call, whichever path served it."""

from __future__ import annotations

import time

import zmq
from conftest import raw_dealer

from specmemo.protocol.errors import error_from_wire
from specmemo.protocol.wire import Command, Header, decode, encode, recv_frames, send_frames


def _burst(i: int) -> tuple[str, dict]:
    kind = i % 4
    if kind == 0:
        return "fail", {"kind": "bad_request", "message": f"no {i}"}  # inline, raises
    if kind == 1:
        return "sleep", {"seconds": 0.001}  # a task
    return "echo", {"data": [i, "x" * (i % 7)]}  # inline


def test_a_burst_of_inline_and_task_calls_gets_one_right_reply_each(echo_deployment):
    sock = raw_dealer(echo_deployment.endpoint)
    n = 600
    try:
        # All sent before any reply is read: the actor finds hundreds queued at one wake-up.
        for i in range(n):
            method, params = _burst(i)
            send_frames(
                sock, encode(Command.REQUEST, b"echo", Header(id=i + 1, method=method, deadline_ms=30000), params)
            )
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
    with echo_deployment.client() as c:  # and the actor goes on serving, nothing left in flight
        assert c.call("echo", "echo", data="after").data == "after"
        assert next(a for a in c.actors() if a.name == "echo").inflight == 0


def test_with_kernel_coalescing_on_every_pipelined_call_comes_back_once(start_deployment):
    from conftest import ECHO_CONFIG

    from specmemo.deploy.load import pipelined_echo

    # A 100 ms sleep makes a wait that should not happen visible: 20 lone calls would take
    # at least 2 s if the kernel slept before passes with fewer than 16 calls in flight.
    config = ECHO_CONFIG.format(name="coal", intensity=20).replace(
        "stop_timeout_s = 3", "stop_timeout_s = 3\ncoalesce_us = 100000"
    )
    d = start_deployment(config, "coal", ["echo"])
    report = pipelined_echo(d.endpoint, 1000, window=64)
    assert (report.answered, report.lost, report.duplicated, report.wrong) == (1000, 0, 0, 0)
    with d.client() as c:  # one call in flight: no coalescing wait on its path
        t0 = time.monotonic()
        for i in range(20):
            assert c.call("echo", "echo", data=i).data == i
        assert time.monotonic() - t0 < 1.0, "lone calls waited for coalescing"


def test_a_cancel_read_in_the_same_burst_as_its_request_cancels_it(echo_deployment):
    # The actor is stopped while REQUEST and CANCEL queue up, so one wake-up reads both: the
    # call's cancel scope must exist before its task first runs. Found in review.
    import os
    import signal
    import time

    pid = echo_deployment.actor_pid("echo")
    sock = raw_dealer(echo_deployment.endpoint)
    try:
        os.kill(pid, signal.SIGSTOP)
        send_frames(
            sock, encode(Command.REQUEST, b"echo", Header(id=7, method="sleep", deadline_ms=30000), {"seconds": 5.0})
        )
        send_frames(sock, encode(Command.CANCEL, b"echo", Header(id=7)))
        time.sleep(0.3)
        os.kill(pid, signal.SIGCONT)
        t0 = time.monotonic()
        assert sock.poll(10000)
        msg = decode(recv_frames(sock))
        assert msg.command == Command.ERROR and error_from_wire(msg.body).name == "Cancelled", msg.body
        assert time.monotonic() - t0 < 4, "the 5 s sleep ran instead of being cancelled"
    finally:
        os.kill(pid, signal.SIGCONT)
        sock.close()


def test_a_reply_msgpack_cannot_carry_becomes_an_internal_error():
    from specmemo.actors.echo import EchoActor
    from specmemo.actors.runtime import ActorRuntime

    runtime = ActorRuntime(EchoActor("echo", {}), "ipc:///nonexistent")
    frames = runtime._final_frames(Command.REPLY, b"caller", Header(id=3), {"value": object()})
    msg = decode(frames)
    err = error_from_wire(msg.body)
    assert msg.command == Command.ERROR and msg.header.id == 3
    assert err.name == "Internal" and "could not be encoded" in err.message and err.origin == "echo"


def test_a_handler_that_returns_an_awaitable_is_awaited(start_deployment, monkeypatch):
    import os
    from pathlib import Path

    from conftest import ECHO_CONFIG

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    config = ECHO_CONFIG.format(name="deco", intensity=20).replace(
        '[actors.echo]\nkind = "echo"',
        '[actors.echo]\nkind = "echo"\nconfig = { class = "decorated_actor:DecoratedEcho" }',
    )
    d = start_deployment(config, "deco", ["echo"])
    with d.client() as c:
        for _ in range(2):  # the first call finds out, the second goes the task path directly
            assert c.call("echo", "sleep", seconds=0.01).slept >= 0.01
        assert c.call("echo", "echo", data=1).data == 1
        assert next(a for a in c.actors() if a.name == "echo").restarts == 0


def test_replies_that_cannot_be_sent_stop_the_actor_reading_more_requests():
    # The test plays the kernel on an inproc ROUTER that does not read: the actor's replies
    # fill the pipe. The actor must then stop taking requests (they wait in the kernel, which
    # answers Overloaded when its queue fills) rather than grow a send task per reply; once the
    # kernel reads again, every call is answered exactly once.
    import threading
    import time

    import msgpack
    import trio

    from specmemo.actors.echo import EchoActor
    from specmemo.actors.runtime import ActorRuntime
    from specmemo.protocol.wire import COMMAND_BYTES, MAGIC

    endpoint = f"inproc://backpressure-{threading.get_ident()}-{time.monotonic_ns()}"
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.setsockopt(zmq.RCVHWM, 1)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoint)
    runtime = ActorRuntime(EchoActor("echo", {}), endpoint, heartbeat_s=1.0, heartbeat_misses=60)
    n, answered, peak_while_held = 3000, {}, []

    def kernel() -> None:
        ident, _, command, name, header, _ = router.recv_multipart()  # READY
        assert command == COMMAND_BYTES[Command.READY] and name == b"echo"
        router.send_multipart([ident, MAGIC, COMMAND_BYTES[Command.REPLY], b"kernel", header, b"\xc0"])
        requests = [
            [
                ident,
                MAGIC,
                COMMAND_BYTES[Command.REQUEST],
                b"client",
                Header(id=i + 1, method="echo").pack(),
                msgpack.packb({"data": i}),
            ]
            for i in range(n)
        ]
        while requests:  # send until the actor's queue is full, reading nothing
            try:
                router.send_multipart(requests[0], zmq.NOBLOCK)
            except zmq.Again:
                break
            requests.pop(0)
        held_until = time.monotonic() + 10  # the actor answers what it read, and stalls
        while runtime.stalled_peak == 0 and time.monotonic() < held_until:
            time.sleep(0.01)
        time.sleep(0.3)  # time for a runtime without backpressure to stall more
        peak_while_held.append(runtime.stalled_peak)
        deadline = time.monotonic() + 30
        while len(answered) < n and time.monotonic() < deadline:
            while requests:
                try:
                    router.send_multipart(requests[0], zmq.NOBLOCK)
                except zmq.Again:
                    break
                requests.pop(0)
            if router.poll(50):
                frames = router.recv_multipart()
                if frames[2] == COMMAND_BYTES[Command.REPLY]:
                    call = msgpack.unpackb(frames[4])["id"]
                    assert call not in answered, f"call {call} answered twice"
                    answered[call] = msgpack.unpackb(frames[5])["data"]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runtime.run)
            await trio.to_thread.run_sync(kernel)
            runtime.stop("the test is over")

    try:
        trio.run(main)
    finally:
        router.close()
    assert len(answered) == n and all(answered[i + 1] == i for i in range(n))
    assert runtime.stalled_peak >= 1, "the test never filled the actor's socket"
    assert peak_while_held[0] <= 2, f"{peak_while_held[0]} replies were left waiting at once"


def test_a_reply_of_another_type_than_declared_becomes_an_internal_error(start_deployment, monkeypatch):
    import os
    from pathlib import Path

    import pytest
    from conftest import ECHO_CONFIG

    from specmemo.protocol.errors import Internal

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    config = ECHO_CONFIG.format(name="wrong", intensity=20).replace(
        '[actors.echo]\nkind = "echo"',
        '[actors.echo]\nkind = "echo"\nconfig = { class = "wrong_reply_actor:WrongReplies" }',
    )
    d = start_deployment(config, "wrong", ["echo"])
    with d.client() as c:
        with pytest.raises(Internal) as inline:  # a plain def, answered inline
            c.call("echo", "echo", data=1)
        assert "SleepReply, not the declared EchoReply" in inline.value.message
        assert inline.value.origin == "echo" and inline.value.detail["expected"] == "EchoReply"
        with pytest.raises(Internal) as task:  # an async def, served by a task
            c.call("echo", "sleep", seconds=0.0)
        assert "a dict, not the declared SleepReply" in task.value.message
        chunks = []
        with pytest.raises(Internal) as stream:
            for chunk in c.stream("echo", "count", n=2):
                chunks.append(chunk)
        assert [chunk.i for chunk in chunks] == [0] and "not the declared CountChunk" in stream.value.message
        assert isinstance(c.call("echo", "metrics").values, dict)  # and it keeps serving
        assert next(a for a in c.actors() if a.name == "echo").restarts == 0


def test_a_stop_while_on_registered_waits_on_peers_still_stops_the_actor():
    # on_registered may wait for peers without end (a memory lease, a restarting memory actor);
    # when the kernel dies meanwhile, PDEATHSIG's SIGTERM must still end the actor within its ladder
    import threading
    import time

    import trio

    from specmemo.actors.echo import EchoActor
    from specmemo.actors.runtime import ActorRuntime
    from specmemo.protocol.wire import COMMAND_BYTES, MAGIC

    class Waiting(EchoActor):
        async def on_registered(self) -> None:
            self.waiting.set()
            await trio.sleep_forever()

        async def background(self) -> None:
            self.background_ran = True

    actor = Waiting("echo", {})
    actor.waiting, actor.background_ran = trio.Event(), False
    endpoint = f"inproc://settling-{threading.get_ident()}-{time.monotonic_ns()}"
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoint)
    runtime = ActorRuntime(actor, endpoint, heartbeat_s=1.0, heartbeat_misses=60)

    def kernel() -> None:
        ident, _, command, name, header, _ = router.recv_multipart()  # READY
        assert command == COMMAND_BYTES[Command.READY] and name == b"echo"
        router.send_multipart([ident, MAGIC, COMMAND_BYTES[Command.REPLY], b"kernel", header, b"\xc0"])

    async def main() -> str:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, kernel)
            with trio.fail_after(20):
                async with trio.open_nursery() as inner:
                    inner.start_soon(runtime.run)
                    await actor.waiting.wait()
                    runtime.stop("signal SIGTERM")
        return runtime.exit_reason

    try:
        assert trio.run(main) == "signal SIGTERM"
    finally:
        router.close()
    assert not actor.background_ran
