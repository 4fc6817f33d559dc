"""The trio side of the SDK: :class:`AsyncCaller` (calls over a socket someone else reads,
as the actor runtime does) and :class:`AsyncClient` (with a socket and a reader of its own)."""

from __future__ import annotations

import itertools
from collections import deque
from contextlib import aclosing
from typing import Any

import trio
import zmq

from .calls import DEFAULT_TIMEOUT, dealer, request_frames, result_of, spec_for, stream_chunk
from .endpoint import find_endpoint
from .errors import DeadlineExceeded, Internal, SpecmemoError
from .methods import MethodSpec
from .trio_zmq import TrioSocket
from .wire import DEFAULT_MAX_MESSAGE_BYTES, Command, Header, Message, decode, encode

#: Calls in flight from which an AsyncClient holds requests for its flusher.
HOLD_FROM = 8


class _Slot:
    """Where the one reply of a call lands: a cheaper stand-in for a memory channel."""

    __slots__ = ("msg", "event")

    def __init__(self) -> None:
        self.msg: Message | None = None
        self.event = trio.Event()

    def send_nowait(self, msg: Message) -> None:
        if self.event.is_set():
            raise trio.WouldBlock  # a second answer to one call: not ours to keep
        self.msg = msg
        self.event.set()

    async def receive(self) -> Message:
        await self.event.wait()
        assert self.msg is not None
        return self.msg


class AsyncCaller:
    """Calls over a :class:`TrioSocket` that someone else reads: replies arrive via :meth:`deliver`.

    The actor runtime uses this for calls an actor makes to other actors through its one
    socket; :class:`AsyncClient` adds a socket of its own and the loop that reads it.
    """

    def __init__(
        self,
        sock: TrioSocket | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        kinds: dict[str, str] | None = None,
    ) -> None:
        self._sock = sock
        self.kinds = dict(kinds or {})  # actor name -> kind, where they differ
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        self._ids = itertools.count(1)
        self._pending: dict[int, trio.MemorySendChannel] = {}

    def deliver(self, msg: Message) -> bool:
        """Hand a received REPLY/ERROR/STREAM/END to the call waiting for it; False if none is."""
        chan = self._pending.get(msg.header.id)
        if chan is None:
            return False
        try:
            chan.send_nowait(msg)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def call_command(self, command: Command, route: str, body: Any, *, timeout: float) -> Message:
        """Send a non-request command that the kernel answers (READY) and return the answer."""
        assert self._sock is not None
        call_id = next(self._ids)
        send, recv = trio.open_memory_channel(1)
        self._pending[call_id] = send
        try:
            await self._sock.send_multipart(encode(Command(command), route.encode(), Header(id=call_id), body))
            with trio.fail_after(timeout):
                return await recv.receive()
        finally:
            self._pending.pop(call_id, None)

    async def _open(
        self,
        actor: str,
        method: str,
        params: dict[str, Any],
        timeout: float | None,
        spec: MethodSpec | None,
        single: bool = False,
    ) -> tuple[int, Any]:
        assert self._sock is not None, "use AsyncClient as an async context manager"
        call_id = next(self._ids)
        limit = self.timeout if timeout is None else timeout
        frames = request_frames(call_id, actor, method, params, limit, self.max_message_bytes, spec)
        # One reply expected: a slot. A stream: a channel (chunks may come faster than read).
        inbox: Any = _Slot() if single else trio.open_memory_channel(1024)
        send, recv = (inbox, inbox) if single else inbox
        self._pending[call_id] = send
        try:
            await self._post(frames, call_id)
        except BaseException:
            self._pending.pop(call_id, None)
            raise
        return call_id, recv

    async def _post(self, frames: list[Any], call_id: int = 0) -> None:
        assert self._sock is not None
        try:
            self._sock.send_multipart_nowait(frames)  # no checkpoint: the caller waits next anyway
        except zmq.Again:
            await self._sock.send_multipart(frames)

    async def _cancel(self, actor: str, call_id: int) -> None:
        if self._sock is not None and not self._sock.closed:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self._sock.send_multipart(encode(Command.CANCEL, actor.encode(), Header(id=call_id)))

    async def call(self, actor: str, method: str, /, *, timeout: float | None = None, **params: Any) -> Any:
        """``await`` the reply of ``actor.method(**params)``, decoded as :meth:`Client.call`'s is."""
        limit = self.timeout if timeout is None else timeout
        spec = spec_for(actor, method, self.kinds)
        call_id, recv = await self._open(actor, method, params, limit, spec, single=True)
        try:
            with trio.move_on_after(limit) as scope:
                msg = await recv.receive()
            if scope.cancelled_caught:
                await self._cancel(actor, call_id)
                raise DeadlineExceeded(
                    f"{actor}.{method} got no reply in time", detail={"actor": actor, "method": method}
                )
        except trio.Cancelled:
            await self._cancel(actor, call_id)
            raise
        finally:
            self._pending.pop(call_id, None)
        if msg.command == Command.STREAM:
            await self._cancel(actor, call_id)
        return result_of(msg, spec)

    async def stream(self, actor: str, method: str, /, *, timeout: float | None = None, **params: Any):
        """Async generator of the chunks of a streaming call."""
        limit = self.timeout if timeout is None else timeout
        spec = spec_for(actor, method, self.kinds)
        call_id, recv = await self._open(actor, method, params, limit, spec)
        deadline = trio.current_time() + limit
        finished = False
        try:
            while not finished:
                with trio.move_on_at(deadline) as scope:
                    msg = await recv.receive()
                if scope.cancelled_caught:
                    raise DeadlineExceeded(f"{actor}.{method} stream did not finish in time")
                finished = msg.command != Command.STREAM
                chunk = stream_chunk(msg, spec)
                if chunk is not None:
                    yield chunk
        finally:
            self._pending.pop(call_id, None)
            if not finished:
                await self._cancel(actor, call_id)


class AsyncClient(AsyncCaller):
    """The trio twin of :class:`Client`: ``async with AsyncClient() as c: await c.call(...)``.

    Many tasks may call concurrently through one client; a background task routes replies
    to callers by correlation id.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        curve: dict[str, bytes] | None = None,
        kinds: dict[str, str] | None = None,
    ) -> None:
        super().__init__(None, timeout=timeout, max_message_bytes=max_message_bytes, kinds=kinds)
        self.endpoint = find_endpoint(endpoint)
        self._curve = curve
        self._nursery_cm: Any = None
        # Messages waiting for the flusher, in order: (call id, frames); id 0 for a cancel.
        # An entry leaves only once sent, so a cancel can see whether its request has.
        self._held: deque[tuple[int, list[Any]]] = deque()
        self._sending = False  # the flusher is sending _held[0]
        self._kick = trio.Event()

    async def __aenter__(self) -> AsyncClient:
        self._sock = TrioSocket(dealer(zmq.Context.instance(), self.endpoint, self._curve))
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        self._nursery.start_soon(self._recv_loop)
        self._nursery.start_soon(self._flusher)
        return self

    async def _post(self, frames: list[Any], call_id: int = 0) -> None:
        """With few calls in flight a request goes at once. With many, requests are held and
        the flusher sends what the tasks of one scheduling pass posted, together: one
        I/O-thread wake-up for all of them, as the actors do with their replies. The flusher costs
        a scheduler pass, which pays only with many calls in flight (bench/async_hold.py)."""
        if len(self._pending) < HOLD_FROM and not self._held:
            await super()._post(frames)
            return
        self._held.append((call_id, frames))
        self._kick.set()

    async def _flusher(self) -> None:
        while True:
            await self._kick.wait()
            self._kick = trio.Event()
            while self._held:
                self._sending = True
                try:
                    await super()._post(self._held[0][1])
                except Exception as exc:  # this message's caller fails, the others go on
                    call_id = self._held[0][0]
                    if call_id:
                        err = Internal(f"the request could not be sent: {type(exc).__name__}: {exc}")
                        self.deliver(Message(Command.ERROR, b"", Header(id=call_id), err.to_wire()))
                finally:
                    self._sending = False
                self._held.popleft()

    async def _cancel(self, actor: str, call_id: int) -> None:
        """A cancel never overtakes its request: a request still held is withdrawn (the
        callee never hears of the call); behind one being sent, the cancel queues."""
        for i, (held_id, _) in enumerate(self._held):
            if held_id == call_id and not (i == 0 and self._sending):
                del self._held[i]
                return
        if self._held:
            self._held.append((0, encode(Command.CANCEL, actor.encode(), Header(id=call_id))))
            self._kick.set()
            return
        await super()._cancel(actor, call_id)

    async def __aexit__(self, *exc: Any) -> None:
        self._nursery.cancel_scope.cancel()
        try:
            await self._nursery_cm.__aexit__(None, None, None)
        finally:
            assert self._sock is not None
            # What is still held (cancels queued behind their requests) goes if there is room,
            # and a short linger lets the I/O thread pass it on: callees stop orphaned calls.
            held, self._held = self._held, deque()
            try:
                for _, frames in held:
                    self._sock.send_multipart_nowait(frames)
            except (zmq.ZMQError, trio.ClosedResourceError):
                pass
            self._sock.close(linger=200 if held else 0)

    async def _recv_loop(self) -> None:
        assert self._sock is not None
        async with aclosing(self._sock.bursts()) as bursts:
            async for burst in bursts:
                for frames in burst:
                    try:
                        msg = decode(frames)
                    except SpecmemoError:
                        continue
                    self.deliver(msg)
