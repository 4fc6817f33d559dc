"""The client SDK: blocking :class:`Client` and its trio twin :class:`AsyncClient`.

    from specmemo.protocol import Client
    with Client() as c:                      # finds the local deployment
        c.call("kernel", "ping")
        x = c.call("solver", "solve", matrix="m1", b=b, alpha=0.5)
        for chunk in c.stream("echo", "count", n=3):
            ...

Errors raise the typed exceptions of :mod:`specmemo.protocol.errors`. A call that times out
sends a cancel to the callee and raises :class:`DeadlineExceeded`; replies that arrive after
that are dropped by correlation id. A client is not thread-safe: use one per thread.
"""
from __future__ import annotations

import itertools
import math
import os
import time
from collections import deque
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Iterator

import trio
import zmq

from .curve import apply_client
from .endpoint import find_endpoint
from .errors import BadRequest, DeadlineExceeded, Internal, SpecmemoError, error_from_wire
from .methods import METHODS
from .schema import from_wire, to_wire
from .trio_zmq import TrioSocket
from .wire import (DEFAULT_MAX_MESSAGE_BYTES, Command, Header, Message, decode, encode,
                   recv_frames, send_frames)

DEFAULT_TIMEOUT = 30.0
#: Calls in flight from which an AsyncClient holds requests for its flusher.
HOLD_FROM = 8


def _dealer(ctx: zmq.Context, endpoint: str, curve: dict[str, bytes] | None) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, b"c-" + os.urandom(6).hex().encode())
    if curve:
        apply_client(sock, curve)
    sock.connect(endpoint)
    return sock


def _request_frames(call_id: int, actor: str, method: str, params: dict[str, Any],
                    timeout: float | None, max_bytes: int) -> list[Any]:
    # Actor names equal their kinds in the shipped configs; other names skip local validation
    # (the callee validates every request anyway).
    spec = METHODS.get(f"{actor}.{method}")
    body: Any = params
    if spec is not None:
        # Validate locally first: a schema violation is the caller's bug, report it here.
        body = to_wire(from_wire(spec.request, params, "params"))
    # No deadline: none given, or one past what the header carries (2**63 ms).
    ms = math.inf if timeout is None else timeout * 1000
    deadline_ms = max(1, math.ceil(ms)) if ms < 2**63 else 0
    header = Header(id=call_id, method=method, deadline_ms=deadline_ms)
    return encode(Command.REQUEST, actor.encode(), header, body, max_bytes=max_bytes)


def _result(msg: Message, actor: str, method: str) -> Any:
    """The value a finished call returns, or the typed error it raises."""
    if msg.command == Command.ERROR:
        raise error_from_wire(msg.body)
    return msg.body


def _stream_chunk(msg: Message) -> Any:
    """What one message of a stream yields: a chunk, nothing (END), or the typed error it raises.

    A plain REPLY to a streaming call is taken as its one and last chunk.
    """
    if msg.command == Command.END:
        return None
    if msg.command == Command.ERROR:
        raise error_from_wire(msg.body)
    return msg.body


@dataclass
class ChatResult:
    """What :meth:`Client.ask` returns."""

    text: str
    token_ids: list[int]
    tokens_per_s: float
    accepted_per_step: float       # mean accepted draft tokens per speculative step
    gamma_mean: float              # mean γ the memory actor granted
    stats: dict[str, Any] = field(default_factory=dict)


class Client:
    """Blocking client of a specmemo deployment (scripts, notebooks, the CLI)."""

    def __init__(self, endpoint: str | None = None, *, timeout: float = DEFAULT_TIMEOUT,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 curve: dict[str, bytes] | None = None) -> None:
        self.endpoint = find_endpoint(endpoint)
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        self._ctx = zmq.Context.instance()
        self._sock = _dealer(self._ctx, self.endpoint, curve)
        self._ids = itertools.count(1)
        self._poll_items = [(self._sock, zmq.POLLIN)]   # zmq_poll itself: Poller adds a layer

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if not self._sock.closed:
            self._sock.close(linger=0)

    # ---------------------------------------------------------------- calls

    def call(self, actor: str, method: str, /, *, timeout: float | None = None, **params: Any) -> Any:
        """Call ``actor.method(**params)`` and return its reply body (a dict)."""
        call_id = self._send(actor, method, params, timeout)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        msg = self._recv_for(call_id, deadline, actor, method)
        if msg.command == Command.STREAM:
            raise BadRequest(f"{actor}.{method} streams: use Client.stream()")
        return _result(msg, actor, method)

    def stream(self, actor: str, method: str, /, *, timeout: float | None = None,
               **params: Any) -> Iterator[Any]:
        """Call a streaming method; yield each chunk until the stream ends.

        ``timeout`` bounds the whole stream. Closing the iterator early cancels the call.
        """
        call_id = self._send(actor, method, params, timeout)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        finished = False
        try:
            while not finished:
                msg = self._recv_for(call_id, deadline, actor, method)
                finished = msg.command != Command.STREAM
                chunk = _stream_chunk(msg)
                if chunk is not None:
                    yield chunk
        finally:
            if not finished:
                self._cancel(actor, call_id)

    def ping(self) -> dict[str, Any]:
        return self.call("kernel", "ping")

    def actors(self) -> list[dict[str, Any]]:
        return self.call("kernel", "actors")["actors"]

    # ---------------------------------------------------------------- chat helpers

    def open_session(self, session: str = "", *, actor: str = "verifier") -> str:
        """Open a chat session on the verifier; returns its id."""
        return self.call(actor, "open", session=session)["session"]

    def close_session(self, session: str, *, actor: str = "verifier") -> int:
        """Close a chat session; its KV blocks are freed everywhere. Returns the target bytes freed."""
        return self.call(actor, "close", session=session)["freed"]

    def chat(self, session: str, message: str, *, max_new_tokens: int = 64, temperature: float = 0.0,
             seed: int = 0, gamma: int | None = None, tree: int | None = None, actor: str = "verifier",
             timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """One chat turn, streamed: yields a chunk per speculative step as its tokens are accepted.
        ``gamma`` fixes the draft nodes per step and ``tree`` caps the token tree's width (1: a
        chain); by default the memory actor picks both within the deployment's ``tree_width``.

        Each chunk has ``tokens`` (ids), ``text`` (their text), ``step`` (γ, accepted, times)
        and ``stats`` (the turn so far: tokens_per_s, mean_accepted, alpha, ...); the last has
        ``done=True`` and the whole ``reply``. Closing the iterator early cancels the turn.
        """
        return self.stream(actor, "chat", session=session, message=message,
                           max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                           gamma=gamma, tree=tree, timeout=timeout)

    def ask(self, session: str, message: str, **kw: Any) -> "ChatResult":
        """The blocking form of :meth:`chat`: the reply text, its token ids and statistics."""
        tokens: list[int] = []
        last: dict[str, Any] = {}
        gammas: list[int] = []
        for chunk in self.chat(session, message, **kw):
            tokens.extend(int(t) for t in chunk["tokens"])
            if chunk.get("step"):
                gammas.append(int(chunk["step"]["gamma"]))
            last = chunk
        stats = last.get("stats", {})
        return ChatResult(text=last.get("reply", ""), token_ids=tokens, stats=stats,
                          tokens_per_s=float(stats.get("tokens_per_s", 0.0)),
                          accepted_per_step=float(stats.get("mean_accepted", 0.0)),
                          gamma_mean=sum(gammas) / len(gammas) if gammas else 0.0)

    def usage(self, *, actor: str = "memory") -> dict[str, Any]:
        """The memory actor's accounting: budget, live, peak, per session, per holder, leases."""
        return self.call(actor, "usage")

    # ---------------------------------------------------------------- solver helpers

    def register_matrix(self, matrix: Any = None, *, mtx: bytes | None = None, kind: str = "skew",
                        id: str = "", actor: str = "solver", **kw: Any) -> dict[str, Any]:
        """Register a scipy sparse matrix (sent as zero-copy CSR arrays) or Matrix Market bytes.

        Returns the plan's report (``id``, ``n``, ``nnz``, bandwidth before/after RCM, parts).
        """
        if matrix is not None:
            csr = matrix.tocsr()
            kw.update(n=csr.shape[0], indptr=csr.indptr, indices=csr.indices, data=csr.data)
        return self.call(actor, "register", id=id, kind=kind, mtx=mtx, **kw)

    def matvec(self, matrix_id: str, x: Any, *, actor: str = "solver") -> Any:
        """y = S x on the solver actor."""
        return self.call(actor, "matvec", id=matrix_id, x=x)["y"]

    def solve(self, matrix_id: str, b: Any, *, alpha: float = 1.0, tol: float = 1e-10,
              maxiter: int = 0, history: bool = False, actor: str = "solver",
              timeout: float | None = None) -> dict[str, Any]:
        """Solve (alpha I + S) x = b by MRS; returns x, converged, iterations, residual, seconds."""
        return self.call(actor, "solve", id=matrix_id, b=b, alpha=alpha, tol=tol, maxiter=maxiter,
                         history=history, timeout=timeout)

    def drop_matrix(self, matrix_id: str, *, actor: str = "solver") -> bool:
        return self.call(actor, "drop", id=matrix_id)["dropped"]

    # ---------------------------------------------------------------- plumbing

    def _send(self, actor: str, method: str, params: dict[str, Any], timeout: float | None) -> int:
        call_id = next(self._ids)
        frames = _request_frames(call_id, actor, method, params,
                                 self.timeout if timeout is None else timeout, self.max_message_bytes)
        send_frames(self._sock, frames)
        return call_id

    def _cancel(self, actor: str, call_id: int) -> None:
        try:
            send_frames(self._sock, encode(Command.CANCEL, actor.encode(), Header(id=call_id)),
                        zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def _recv_for(self, call_id: int, deadline: float, actor: str, method: str) -> Message:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not zmq.zmq_poll(self._poll_items, max(1, int(left * 1000))):
                if time.monotonic() >= deadline:
                    self._cancel(actor, call_id)
                    raise DeadlineExceeded(f"{actor}.{method} got no reply in time",
                                           detail={"actor": actor, "method": method})
                continue
            frames = recv_frames(self._sock)
            try:
                msg = decode(frames)
            except SpecmemoError:
                continue  # not ours to answer: a peer sent garbage back
            if msg.header.id == call_id:
                return msg
            # A late reply to an earlier call that timed out: dropped by correlation id.


class _Slot:
    """Where the one reply of a call lands: a cheaper stand-in for a memory channel."""

    __slots__ = ("msg", "event")

    def __init__(self) -> None:
        self.msg: Message | None = None
        self.event = trio.Event()

    def send_nowait(self, msg: Message) -> None:
        if self.event.is_set():
            raise trio.WouldBlock   # a second answer to one call: not ours to keep
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

    def __init__(self, sock: TrioSocket | None = None, *, timeout: float = DEFAULT_TIMEOUT,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self._sock = sock
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

    async def call_command(self, command: Command, route: str, body: Any, *,
                           timeout: float) -> Message:
        """Send a non-request command that the kernel answers (READY) and return the answer."""
        assert self._sock is not None
        call_id = next(self._ids)
        send, recv = trio.open_memory_channel(1)
        self._pending[call_id] = send
        try:
            await self._sock.send_multipart(encode(Command(command), route.encode(),
                                                   Header(id=call_id), body))
            with trio.fail_after(timeout):
                return await recv.receive()
        finally:
            self._pending.pop(call_id, None)

    async def _open(self, actor: str, method: str, params: dict[str, Any],
                    timeout: float | None, single: bool = False) -> tuple[int, Any]:
        assert self._sock is not None, "use AsyncClient as an async context manager"
        call_id = next(self._ids)
        frames = _request_frames(call_id, actor, method, params,
                                 self.timeout if timeout is None else timeout, self.max_message_bytes)
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
            self._sock.send_multipart_nowait(frames)   # no checkpoint: the caller waits next anyway
        except zmq.Again:
            await self._sock.send_multipart(frames)

    async def _cancel(self, actor: str, call_id: int) -> None:
        if self._sock is not None and not self._sock.closed:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self._sock.send_multipart(encode(Command.CANCEL, actor.encode(), Header(id=call_id)))

    async def call(self, actor: str, method: str, /, *, timeout: float | None = None, **params: Any) -> Any:
        limit = self.timeout if timeout is None else timeout
        call_id, recv = await self._open(actor, method, params, limit, single=True)
        try:
            with trio.move_on_after(limit) as scope:
                msg = await recv.receive()
            if scope.cancelled_caught:
                await self._cancel(actor, call_id)
                raise DeadlineExceeded(f"{actor}.{method} got no reply in time",
                                       detail={"actor": actor, "method": method})
        except trio.Cancelled:
            await self._cancel(actor, call_id)
            raise
        finally:
            self._pending.pop(call_id, None)
        return _result(msg, actor, method)

    async def stream(self, actor: str, method: str, /, *, timeout: float | None = None, **params: Any):
        """Async generator of the chunks of a streaming call."""
        limit = self.timeout if timeout is None else timeout
        call_id, recv = await self._open(actor, method, params, limit)
        deadline = trio.current_time() + limit
        finished = False
        try:
            while not finished:
                with trio.move_on_at(deadline) as scope:
                    msg = await recv.receive()
                if scope.cancelled_caught:
                    raise DeadlineExceeded(f"{actor}.{method} stream did not finish in time")
                finished = msg.command != Command.STREAM
                chunk = _stream_chunk(msg)
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

    def __init__(self, endpoint: str | None = None, *, timeout: float = DEFAULT_TIMEOUT,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 curve: dict[str, bytes] | None = None) -> None:
        super().__init__(None, timeout=timeout, max_message_bytes=max_message_bytes)
        self.endpoint = find_endpoint(endpoint)
        self._curve = curve
        self._nursery_cm: Any = None
        # Messages waiting for the flusher, in order: (call id, frames); id 0 for a cancel.
        # An entry leaves only once sent, so a cancel can see whether its request has.
        self._held: deque[tuple[int, list[Any]]] = deque()
        self._sending = False                 # the flusher is sending _held[0]
        self._kick = trio.Event()

    async def __aenter__(self) -> "AsyncClient":
        self._sock = TrioSocket(_dealer(zmq.Context.instance(), self.endpoint, self._curve))
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
                except Exception as exc:   # this message's caller fails, the others go on
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
