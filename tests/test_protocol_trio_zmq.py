"""The trio adapter under stress: many tasks, tiny high-water marks, random cancellations."""

from __future__ import annotations

import os

import trio
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from specmemo.protocol.trio_zmq import TrioSocket


def _pair(hwm: int) -> tuple[zmq.Socket, zmq.Socket]:
    ctx = zmq.Context.instance()
    server, client = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    server.setsockopt(zmq.ROUTER_MANDATORY, 1)  # else a full peer pipe drops replies silently
    for s in (server, client):
        s.setsockopt(zmq.SNDHWM, hwm)
        s.setsockopt(zmq.RCVHWM, hwm)
        s.setsockopt(zmq.LINGER, 0)
    endpoint = f"inproc://trio-zmq-{os.urandom(4).hex()}"
    server.bind(endpoint)
    client.connect(endpoint)
    return server, client


@settings(max_examples=int(os.environ.get("SPECMEMO_ADAPTER_EXAMPLES", "100")))
@given(
    hwm=st.integers(1, 50),
    tasks=st.integers(1, 24),
    per_task=st.integers(1, 12),
    sizes=st.lists(st.integers(0, 70_000), min_size=1, max_size=8),
    cancel_every=st.integers(0, 5),
    servers=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_every_sent_request_gets_exactly_one_reply_and_nothing_hangs(
    hwm, tasks, per_task, sizes, cancel_every, servers, seed
):
    attempted: set[bytes] = set()  # a send was started (recorded first, as a real caller
    sent: set[bytes] = set()  # registers its call before sending); sent: it completed
    replies: dict[bytes, int] = {}
    waiting: dict[bytes, trio.Event] = {}

    async def main() -> None:
        raw_server, raw_client = _pair(hwm)
        server, client = TrioSocket(raw_server), TrioSocket(raw_client)
        try:
            with trio.fail_after(20):  # "nothing hangs": a hang fails the test, it does not block CI
                async with trio.open_nursery() as nursery:
                    for _ in range(servers):
                        nursery.start_soon(serve, server)
                    nursery.start_soon(dispatch, client)
                    async with trio.open_nursery() as workers:
                        for t in range(tasks):
                            workers.start_soon(worker, client, t)
                    # Every request that went out must come back, including those whose sender
                    # was cancelled while waiting for the reply.
                    while set(replies) != sent:
                        await trio.sleep(0.005)
                    nursery.cancel_scope.cancel()
        finally:
            server.close()
            client.close()

    async def serve(sock: TrioSocket) -> None:
        while True:
            ident, rid, payload = await sock.recv_multipart(small=3)
            await sock.send_multipart([ident, rid, payload])

    async def dispatch(sock: TrioSocket) -> None:
        while True:
            rid, payload = await sock.recv_multipart(small=2)
            rid = bytes(rid)
            # The reply may be read before the sender resumes after its send: only a reply to a
            # request never even attempted is wrong here. One to a send that was cancelled
            # before completing makes the final ``set(replies) == sent`` fail.
            assert rid in attempted, "a reply to a request that was never sent"
            replies[rid] = replies.get(rid, 0) + 1
            assert replies[rid] == 1, "a request got two replies"
            assert len(payload) == int(rid.split(b":")[2])
            if rid in waiting:
                waiting[rid].set()

    async def worker(sock: TrioSocket, t: int) -> None:
        for i in range(per_task):
            size = sizes[(t + i) % len(sizes)]
            rid = f"{t}:{i}:{size}".encode()
            waiting[rid] = trio.Event()
            cancel_now = cancel_every and (t * per_task + i + seed) % cancel_every == 0
            attempted.add(rid)
            with trio.move_on_after(0.0005 if cancel_now else 60):
                await sock.send_multipart([rid, b"x" * size])
                sent.add(rid)
                await waiting[rid].wait()

    trio.run(main)
    assert set(replies) == sent
    assert all(n == 1 for n in replies.values())


def test_a_cancelled_watcher_hands_the_fd_to_the_next_waiter():
    async def main() -> None:
        raw_server, raw_client = _pair(1)
        server, client = TrioSocket(raw_server), TrioSocket(raw_client)
        try:
            with trio.fail_after(10):
                async with trio.open_nursery() as n:
                    got = []

                    async def recv() -> None:
                        got.append(await client.recv_multipart(small=1))

                    with trio.move_on_after(0.05):  # first waiter becomes the watcher, then leaves
                        await client.recv_multipart()
                    n.start_soon(recv)
                    n.start_soon(recv)
                    await trio.sleep(0.05)
                    await client.send_multipart([b"hello"])
                    ident, _ = await server.recv_multipart(small=2)
                    await server.send_multipart([ident, b"a"])
                    await server.send_multipart([ident, b"b"])
            assert sorted(bytes(g[0]) for g in got) == [b"a", b"b"]
        finally:
            server.close()
            client.close()

    trio.run(main)


def test_a_reader_coming_back_to_wait_does_not_strand_a_blocked_sender():
    # A sender is blocked at the high-water mark, sleeping on the fd; the peer drains the queue
    # (the fd's edge fires); then the reader's loop comes back to wait and reads EVENTS, which
    # consumes that edge. The read must wake the sender (rule 2), or it sleeps until some
    # unrelated message arrives. Found in review; this fails without the wake in _events().
    async def main() -> None:
        peer, raw = _pair(2)
        sock = TrioSocket(raw)
        done = trio.Event()

        async def sender() -> None:
            for _ in range(50):
                await sock.send_multipart([b"x" * 10])
            done.set()

        def drain() -> None:
            while True:
                try:
                    peer.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    return

        try:
            async with trio.open_nursery() as n:
                n.start_soon(sender)
                await trio.sleep(0.1)
                assert not done.is_set() and sock._waiters[zmq.POLLOUT] == 1, "the sender should be blocked"
                drain()
                with trio.move_on_after(0.01):
                    await sock.wait_readable()  # the read loop coming back to wait
                with trio.fail_after(2):
                    while not done.is_set():
                        await trio.sleep(0.02)
                        drain()
        finally:
            sock.close()
            peer.close()

    trio.run(main)
