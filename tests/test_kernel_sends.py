"""The kernel holds what it sends while it routes a batch and sends it at the end of the batch:
order must survive that, and a send that fails at the end must still answer its caller."""

from __future__ import annotations

import time
from typing import Any

import zmq
from conftest import raw_dealer

from specmemo.protocol import ActorDied
from specmemo.protocol.errors import error_from_wire
from specmemo.protocol.wire import MAGIC, Command, Header, decode, encode, unpack_body

BARE = """
[deployment]
name = "{name}"
heartbeat_s = 0.3
heartbeat_misses = 20
"""


def _register(endpoint: str, name: str) -> zmq.Socket:
    """A raw external actor (docs/protocol.md: READY, then requests come in)."""
    actor = raw_dealer(endpoint, f"a-{name}".encode())
    actor.send_multipart(
        encode(Command.READY, name.encode(), Header(id=1), {"kind": "echo", "pid": 1, "methods": ["echo"]})
    )
    assert actor.poll(5000), "no answer to READY"
    assert decode(actor.recv_multipart()).command == Command.REPLY
    return actor


def test_a_request_and_its_cancel_sent_back_to_back_reach_the_actor_in_order(start_deployment):
    d = start_deployment(BARE.format(name="order"), "order", [])
    actor = _register(d.endpoint, "slow")
    client = raw_dealer(d.endpoint)
    n = 300
    for i in range(1, n + 1):  # all queued before the kernel reads: they route as one batch
        client.send_multipart(encode(Command.REQUEST, b"slow", Header(id=i, method="echo"), {"data": i}))
        client.send_multipart(encode(Command.CANCEL, b"slow", Header(id=i)))
    seen: list[tuple[Command, int]] = []
    deadline = time.monotonic() + 20
    while len(seen) < 2 * n and time.monotonic() < deadline:
        if actor.poll(200):
            msg = decode(actor.recv_multipart(), decode_body=False)
            if msg.command in (Command.REQUEST, Command.CANCEL):
                seen.append((msg.command, msg.header.id))
    assert len(seen) == 2 * n, f"the actor got {len(seen)} of {2 * n} messages"
    expected = [(c, i) for i in range(1, n + 1) for c in (Command.REQUEST, Command.CANCEL)]
    assert seen == expected, "the kernel reordered messages from one caller to one actor"
    actor.close()
    client.close()


def test_an_actor_whose_socket_went_away_fails_the_call_and_is_marked_down(start_deployment):
    d = start_deployment(BARE.format(name="ghost"), "ghost", [])
    _register(d.endpoint, "ghost").close()  # gone without BYE: only a send can find out
    time.sleep(0.3)  # the kernel's I/O thread sees the socket close
    client = raw_dealer(d.endpoint)
    for i in (1, 2):
        client.send_multipart(encode(Command.REQUEST, b"ghost", Header(id=i, method="echo"), {"data": i}))
    replies = {}
    while len(replies) < 2 and client.poll(5000):
        msg = decode(client.recv_multipart())
        assert msg.command == Command.ERROR, msg
        assert msg.header.id not in replies, f"call {msg.header.id} answered twice"
        replies[msg.header.id] = error_from_wire(msg.body)
    assert sorted(replies) == [1, 2], "every call gets exactly one answer"
    assert all(isinstance(e, ActorDied) for e in replies.values()), replies
    assert "went away" in str(replies[1])
    with d.client(timeout=5) as c:
        row = next(a for a in c.actors() if a.name == "ghost")
        assert row.state == "stopped" and row.inflight == 0, row
        assert c.ping().pid > 0  # and the kernel serves on
    client.close()


def test_error_replies_and_forwarded_calls_from_one_batch_all_arrive(start_deployment):
    # A batch mixing calls the kernel forwards and calls it refuses at once (unknown actor):
    # every one is answered exactly once, each by the right party.
    d = start_deployment(BARE.format(name="mixed"), "mixed", [])
    actor = _register(d.endpoint, "echoer")
    client = raw_dealer(d.endpoint)
    n = 200
    for i in range(1, n + 1):
        route = b"echoer" if i % 2 else b"nobody"
        client.send_multipart(encode(Command.REQUEST, route, Header(id=i, method="echo"), {"data": i}))
    answered: dict[int, Command] = {}
    deadline = time.monotonic() + 20
    while len(answered) < n and time.monotonic() < deadline:
        if actor.poll(0):
            frames = actor.recv_multipart()
            msg = decode(frames, decode_body=False)
            if msg.command == Command.REQUEST:
                actor.send_multipart(
                    [MAGIC, bytes([Command.REPLY]), msg.route, Header(id=msg.header.id).pack(), frames[4]]
                )
        if client.poll(10):
            msg = decode(client.recv_multipart())
            assert msg.header.id not in answered, f"call {msg.header.id} answered twice"
            answered[msg.header.id] = msg.command
            if msg.command == Command.REPLY:
                assert msg.body == {"data": msg.header.id}
            else:
                assert msg.body["name"] == "UnknownActor", msg.body
    assert len(answered) == n
    assert all(answered[i] == (Command.REPLY if i % 2 else Command.ERROR) for i in answered)
    actor.close()
    client.close()


def test_the_async_client_never_lets_a_cancel_overtake_its_held_request(start_deployment):
    # With many calls in flight the AsyncClient holds requests for its flusher task. Calls
    # cancelled before the flusher ran must reach the actor as REQUEST then CANCEL, or not at
    # all (a request still held is withdrawn): a cancel that went first would be dropped by
    # the kernel (no such call yet), and the actor would serve calls nobody waits for.
    import trio

    from specmemo.protocol import AsyncClient

    d = start_deployment(BARE.format(name="held"), "held", [])
    actor = _register(d.endpoint, "ext")
    seen: list[tuple[Command, int, Any]] = []

    async def main() -> None:
        async with AsyncClient(d.endpoint) as c:
            async with trio.open_nursery() as nursery:
                for i in range(24):
                    nursery.start_soon(lambda i=i: c.call("ext", "echo", data=i, timeout=30))
                nursery.cancel_scope.cancel()  # before any of them, or the flusher, ran
            # Read while the client is still open: closing it (linger 0) drops what its I/O
            # thread has not sent yet. Blocking here is fine, that thread does the sending.
            while actor.poll(500):
                seen.append(_call_of(actor.recv_multipart()))

    trio.run(main)
    actor.close()
    _check_request_cancel_order(seen, cancelled=set(range(24)), expected=set())
    assert seen, "no call reached the actor: nothing was tested"


def test_an_async_client_at_its_high_water_mark_keeps_order_and_loses_no_request(monkeypatch):
    # The client's socket holds one message and its peer (a raw ROUTER standing in for the
    # kernel) reads nothing for a while, so the flusher is stuck partway through its queue
    # when two callers give up. Their cancels must queue behind their requests (or withdraw
    # them), and the other callers' requests must all go out.
    import threading

    import trio

    from specmemo.protocol import AsyncClient, async_client

    endpoint = f"inproc://held-hwm-{time.monotonic_ns()}"
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.RCVHWM, 1)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoint)

    def tiny_dealer(ctx, ep, curve):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 1)
        sock.connect(ep)
        return sock

    monkeypatch.setattr(async_client, "dealer", tiny_dealer)
    seen: list[tuple[Command, int, Any]] = []

    def kernel() -> None:
        time.sleep(0.6)
        while router.poll(1000):
            seen.append(_call_of(router.recv_multipart()[1:]))

    reader = threading.Thread(target=kernel)
    reader.start()
    scopes: dict[int, trio.CancelScope] = {}
    cancelled = {15, 25}

    async def one(c: AsyncClient, i: int) -> None:
        with trio.CancelScope() as scope:
            scopes[i] = scope
            await c.call("x", "echo", data=i, timeout=10)

    async def main() -> None:
        async with AsyncClient(endpoint) as c:
            async with trio.open_nursery() as nursery:
                for i in range(1, 31):
                    nursery.start_soon(one, c, i)
                await trio.sleep(0.3)
                # Also the call whose request the flusher is sending right now (the head of
                # the queue, stuck at the high-water mark): it cannot be withdrawn, so its
                # cancel must queue behind it, and the next request must not be dropped.
                assert c._sending, "the flusher is not stuck: the test sets up nothing"
                cancelled.add(unpack_body(c._held[0][1][4])["data"])
                for i in cancelled:
                    scopes[i].cancel()
                await trio.to_thread.run_sync(reader.join)
                nursery.cancel_scope.cancel()

    trio.run(main)
    router.close()
    _check_request_cancel_order(seen, cancelled=cancelled, expected=set(range(1, 31)) - cancelled)


def _call_of(frames: list[bytes]) -> tuple[Command, int, Any]:
    """(command, call id, the request's ``data``) of a message as a DEALER sent it."""
    msg = decode(frames)
    return msg.command, msg.header.id, (msg.body or {}).get("data") if msg.command == Command.REQUEST else None


def _check_request_cancel_order(seen: list[tuple[Command, int, Any]], cancelled: set[int], expected: set[int]) -> None:
    """Calls are told apart by their ``data`` (call ids follow the order trio ran the tasks):
    every ``expected`` one was requested once; a ``cancelled`` one was requested then
    cancelled, or never heard of; no cancel arrived for a call not requested before it."""
    data_of: dict[int, Any] = {}
    for command, call_id, data in seen:
        if command == Command.REQUEST:
            assert call_id not in data_of, f"call {call_id} was requested twice"
            data_of[call_id] = data
        elif command == Command.CANCEL:  # (an actor also gets the kernel's heartbeats)
            assert call_id in data_of, f"the cancel of call {call_id} came before its request"
    requested = set(data_of.values())
    assert expected <= requested, f"requests never sent: {sorted(expected - requested)}"
    cancels = {data_of[i] for c, i, _ in seen if c == Command.CANCEL}
    assert cancels == requested & cancelled, (
        f"cancelled calls the peer heard of: {sorted(requested & cancelled)}, cancels: {sorted(cancels)}"
    )


def test_a_held_request_that_cannot_be_sent_fails_its_call_and_no_other(monkeypatch):
    # The flusher sends many callers' requests; one failed send must cost its own call
    # (a typed error) and leave the client serving the rest.
    import errno
    import threading

    import trio

    from specmemo.protocol import AsyncClient, Internal
    from specmemo.protocol import client as client_module

    endpoint = f"inproc://held-fail-{time.monotonic_ns()}"
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoint)
    done = threading.Event()

    def echo() -> None:  # a stand-in kernel + actor: every request answered with its body
        while not done.is_set():
            if router.poll(50):
                ident, *frames = router.recv_multipart()
                msg = decode(frames)
                if msg.command == Command.REQUEST:
                    router.send_multipart([ident, *encode(Command.REPLY, b"x", Header(id=msg.header.id), msg.body)])

    server = threading.Thread(target=echo)
    server.start()
    real_post = client_module.AsyncCaller._post
    failed_id = 12

    async def failing_post(self, frames, call_id=0):
        if Header.unpack(frames[3]).id == failed_id:
            raise zmq.ZMQError(errno.EFAULT)
        await real_post(self, frames, call_id)

    monkeypatch.setattr(client_module.AsyncCaller, "_post", failing_post)
    results: dict[int, Any] = {}

    async def one(c: AsyncClient, i: int) -> None:
        try:
            results[i] = (await c.call("x", "echo", data=i, timeout=10))["data"]
        except Internal as exc:
            results[i] = exc

    async def main() -> None:
        async with AsyncClient(endpoint) as c:
            async with trio.open_nursery() as nursery:
                for i in range(20):  # all opened in one pass: ids 8.. are held
                    nursery.start_soon(one, c, i)
            assert not c._held

    try:
        trio.run(main)
    finally:
        done.set()
        server.join()
        router.close()
    errors = [i for i, r in results.items() if isinstance(r, Internal)]
    assert len(errors) == 1 and "could not be sent" in str(results[errors[0]]), results
    assert all(results[i] == i for i in results if i not in errors)
    assert len(results) == 20
