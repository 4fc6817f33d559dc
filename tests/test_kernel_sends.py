"""The kernel holds what it sends while it routes a batch and sends it at the end of the batch:
order must survive that, and a send that fails at the end must still answer its caller."""
from __future__ import annotations

import time

import zmq

from specmemo.protocol import ActorDied
from specmemo.protocol.errors import error_from_wire
from specmemo.protocol.wire import MAGIC, Command, Header, decode, encode

BARE = """
[deployment]
name = "{name}"
heartbeat_s = 0.3
heartbeat_misses = 20
"""


def _dealer(endpoint: str, ident: bytes | None = None) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if ident:
        sock.setsockopt(zmq.ROUTING_ID, ident)
    sock.connect(endpoint)
    return sock


def _register(endpoint: str, name: str) -> zmq.Socket:
    """A raw external actor (docs/protocol.md: READY, then requests come in)."""
    actor = _dealer(endpoint, f"a-{name}".encode())
    actor.send_multipart(encode(Command.READY, name.encode(), Header(id=1),
                                {"kind": "echo", "pid": 1, "methods": ["echo"]}))
    assert actor.poll(5000), "no answer to READY"
    assert decode(actor.recv_multipart()).command == Command.REPLY
    return actor


def test_a_request_and_its_cancel_sent_back_to_back_reach_the_actor_in_order(start_deployment):
    d = start_deployment(BARE.format(name="order"), "order", [])
    actor = _register(d.endpoint, "slow")
    client = _dealer(d.endpoint)
    n = 300
    for i in range(1, n + 1):   # all queued before the kernel reads: they route as one batch
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
    _register(d.endpoint, "ghost").close()   # gone without BYE: only a send can find out
    time.sleep(0.3)                          # the kernel's I/O thread sees the socket close
    client = _dealer(d.endpoint)
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
        row = next(a for a in c.actors() if a["name"] == "ghost")
        assert row["state"] == "down" and row["inflight"] == 0, row
        assert c.ping()["pid"] > 0                   # and the kernel serves on
    client.close()


def test_error_replies_and_forwarded_calls_from_one_batch_all_arrive(start_deployment):
    # A batch mixing calls the kernel forwards and calls it refuses at once (unknown actor):
    # every one is answered exactly once, each by the right party.
    d = start_deployment(BARE.format(name="mixed"), "mixed", [])
    actor = _register(d.endpoint, "echoer")
    client = _dealer(d.endpoint)
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
                actor.send_multipart([MAGIC, bytes([Command.REPLY]), msg.route,
                                      Header(id=msg.header.id).pack(), frames[4]])
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
    # cancelled before the flusher runs must still reach the actor as REQUEST then CANCEL:
    # a cancel that went first would be dropped by the kernel (no such call yet), and the
    # actor would serve calls nobody waits for.
    import trio

    from specmemo.protocol import AsyncClient

    d = start_deployment(BARE.format(name="held"), "held", [])
    actor = _register(d.endpoint, "ext")
    n = 24

    requests: list[int] = []
    cancels: list[int] = []

    async def main() -> None:
        async with AsyncClient(d.endpoint) as c:
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(lambda i=i: c.call("ext", "echo", data=i, timeout=30))
                nursery.cancel_scope.cancel()   # before any of them, or the flusher, ran
            # Read while the client is still open: closing it (linger 0) drops what its I/O
            # thread has not sent yet. Blocking here is fine, that thread does the sending.
            deadline = time.monotonic() + 10
            while len(cancels) < n and time.monotonic() < deadline:
                if actor.poll(200):
                    msg = decode(actor.recv_multipart(), decode_body=False)
                    if msg.command == Command.REQUEST:
                        requests.append(msg.header.id)
                    elif msg.command == Command.CANCEL:
                        assert msg.header.id in requests, f"call {msg.header.id}: CANCEL before REQUEST"
                        cancels.append(msg.header.id)

    trio.run(main)
    assert len(requests) == n, f"{len(requests)} of {n} requests reached the actor"
    assert sorted(cancels) == sorted(requests), "every request was followed by its cancel"
    actor.close()
