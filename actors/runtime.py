"""The trio shell that runs one actor process: connect, register, serve, heartbeat, stop.

One DEALER socket connected to the kernel carries everything: requests in, replies out,
calls the actor makes to other actors, heartbeats both ways. The shell decodes and
validates every request at the boundary and answers anything malformed with a typed error;
what a handler returns (or yields) is checked against the method's declared reply (or chunk)
class on the way out, and a mismatch is answered as ``Internal``.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import traceback
from contextlib import aclosing
from typing import Any

import trio
import zmq

from specmemo.protocol import methods
from specmemo.protocol.client import AsyncCaller
from specmemo.protocol.control import Notice, NoticeEvent, ReadyBody, unpack_control
from specmemo.protocol.curve import apply_client
from specmemo.protocol.errors import (
    ActorDied,
    BadRequest,
    Cancelled,
    DeadlineExceeded,
    Internal,
    Overloaded,
    SpecmemoError,
    error_from_wire,
)
from specmemo.protocol.method_table import result_to_wire
from specmemo.protocol.schema import to_wire
from specmemo.protocol.trio_zmq import TrioSocket
from specmemo.protocol.wire import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Command,
    Header,
    Message,
    decode,
    encode,
    frame_bytes,
    unpack_body,
)

from .base import Actor, Call
from .handlers import Handler, Handlers, is_awaitable

log = logging.getLogger("specmemo.actor")


class ActorRuntime:
    def __init__(
        self,
        actor: Actor,
        endpoint: str,
        *,
        heartbeat_s: float = 1.0,
        heartbeat_misses: int = 5,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        curve: dict[str, bytes] | None = None,
    ) -> None:
        self.actor = actor
        self.endpoint = endpoint
        self.heartbeat_s = heartbeat_s
        self.heartbeat_misses = heartbeat_misses
        self.max_message_bytes = max_message_bytes
        self.curve = curve
        self.active: dict[tuple[bytes, int], Call] = {}
        self.handlers = Handlers(actor)
        self._outbox: list[list[Any]] = []  # replies held until the burst is dispatched
        self._stalled = 0  # batches of replies waiting for socket room
        self._unstalled = trio.Event()
        self.stalled_peak = 0  # the most at once (a test checks it stays small)
        self._stop = trio.Event()
        self._starting = trio.CancelScope()  # cancelled by a stop that comes during on_start
        self._settling = trio.CancelScope()  # cancelled by a stop that comes during on_registered
        self._last_kernel = time.monotonic()
        self._parent = os.getppid()
        self.exit_reason = ""

    # ---------------------------------------------------------------- lifecycle

    async def run(self) -> str:
        ctx: zmq.Context = zmq.Context.instance()
        raw = ctx.socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 1000)
        raw.setsockopt(zmq.ROUTING_ID, f"a-{self.actor.name}-{os.getpid()}".encode())
        raw.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
        if self.curve:
            apply_client(raw, self.curve)
        raw.connect(self.endpoint)
        self.sock = TrioSocket(raw)
        self.actor.peers = AsyncCaller(
            self.sock, max_message_bytes=self.max_message_bytes, kinds=self.actor.peers.kinds
        )
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._signals)
                nursery.start_soon(self._recv_loop)
                with self._starting:
                    await self.actor.on_start()
                    await self._register()
                if self._starting.cancelled_caught:
                    nursery.cancel_scope.cancel()
                    return self.exit_reason
                nursery.start_soon(self._heartbeat_loop)
                with self._settling:  # it may wait on peers (a lease, a restarting memory actor) for ever
                    await self.actor.on_registered()
                if not self._settling.cancelled_caught:
                    nursery.start_soon(self.actor.background)
                    log.info("%s ready (pid %d)", self.actor.name, os.getpid())
                await self._stop.wait()
                await self._shutdown()
                nursery.cancel_scope.cancel()
        finally:
            self.sock.close(linger=0)
        return self.exit_reason

    def stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self.exit_reason = reason
            self._stop.set()
            self._starting.cancel()
            self._settling.cancel()

    async def _shutdown(self) -> None:
        for call in list(self.active.values()):
            if call.scope is not None:
                call.scope.cancel()
        with trio.move_on_after(2):
            while self.active:
                await trio.sleep(0.01)
        with trio.move_on_after(5):
            await self.actor.on_stop()
        with trio.move_on_after(1):
            await self._send(Command.BYE, self.actor.name.encode(), Header())

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                self.stop(f"signal {signal.Signals(signum).name}")

    async def _register(self) -> None:
        names = [n[4:] for n in dir(self.actor) if n.startswith("rpc_")]
        body = ReadyBody(kind=self.actor.kind, pid=os.getpid(), methods=names)
        reply = await self.actor.peers.call_command(Command.READY, self.actor.name, to_wire(body), timeout=30)
        if reply.command == Command.ERROR:
            err = error_from_wire(reply.body)
            raise SystemExit(f"{self.actor.name}: the kernel refused registration: {err}")

    async def _heartbeat_loop(self) -> None:
        limit = self.heartbeat_s * self.heartbeat_misses
        while True:
            await self._send(Command.HEARTBEAT, b"", Header())
            if time.monotonic() - self._last_kernel > limit:
                self.stop(f"no heartbeat from the kernel for {limit:.1f} s")
                return
            if os.getppid() != self._parent:
                self.stop("the kernel process exited")
                return
            await trio.sleep(self.heartbeat_s)

    # ---------------------------------------------------------------- receiving

    async def _recv_loop(self) -> None:
        async with aclosing(self.sock.bursts()) as bursts:
            async for burst in bursts:
                try:
                    for frames in burst:
                        try:
                            self._dispatch(frames)
                        except Exception:  # a bug must cost one message, not the actor
                            log.error(
                                "%s: a message could not be handled:\n%s", self.actor.name, traceback.format_exc()
                            )
                finally:
                    # The replies of the burst go out together: sent one by one, each would
                    # wake libzmq's I/O thread (and then the kernel) on its own
                    # (docs/decisions.md).
                    self._flush()
                # Backpressure: while replies wait for room in the socket, take no more requests.
                # They queue in the kernel, which answers Overloaded once its queue to us is
                # full, instead of this process growing a send task per reply.
                while self._stalled:
                    await self._unstalled.wait()

    def _dispatch(self, frames: list[Any]) -> None:
        self._last_kernel = time.monotonic()
        try:
            msg = decode(frames, decode_body=False)
        except SpecmemoError as exc:
            log.warning("%s: dropped a malformed message from the kernel: %s", self.actor.name, exc)
            return
        cmd = msg.command
        if cmd == Command.REQUEST:
            self._on_request(msg)
        elif cmd in (Command.REPLY, Command.ERROR, Command.STREAM, Command.END):
            try:
                msg.body = _body(msg)
            except SpecmemoError as exc:
                msg.command, msg.body = Command.ERROR, exc.to_wire()
            self.actor.peers.deliver(msg)
        elif cmd == Command.CANCEL:
            call = self.active.get((msg.route, msg.header.id))
            if call is not None and call.scope is not None:
                call.cancelled_by_peer = True
                call.scope.cancel()
        elif cmd == Command.BYE:
            self.stop("asked to stop by the kernel")
        elif cmd == Command.NOTICE:
            self._on_notice(msg)

    def _on_notice(self, msg: Message) -> None:
        try:
            notice = unpack_control(Notice, frame_bytes(msg.raw_body), "NOTICE")
        except SpecmemoError as exc:  # an event this actor does not know: not for it
            log.debug("%s: ignored a notice: %s", self.actor.name, exc)
            return
        if notice.event == NoticeEvent.ACTOR_DIED:
            self.nursery.start_soon(self.actor.on_peer_died, notice.name)

    def _on_request(self, msg: Message) -> None:
        key = (msg.route, msg.header.id)
        try:
            if key in self.active:
                raise BadRequest(f"call id {msg.header.id} is already in flight from this caller")
            handler = self.handlers.get(msg.header.method)
            if not handler.inline and len(self.active) >= self.actor.max_concurrency:
                raise Overloaded(f"{self.actor.name} is serving {len(self.active)} async calls, its limit")
            request: Any = methods.from_wire(handler.request, _body(msg), "params")
        except SpecmemoError as exc:
            exc.origin = exc.origin or self.actor.name
            self._reply(Command.ERROR, msg.route, Header(id=msg.header.id), exc.to_wire())
            return
        received = trio.current_time()
        deadline = received + msg.header.deadline_ms / 1000 if msg.header.deadline_ms else float("inf")
        call = Call(msg.header.id, msg.header.method, msg.route, deadline, started=received)
        fn = handler.fn
        if handler.inline:
            # A plain ``def`` handler: answered here, without a task or a cancel scope.
            try:
                result = fn(request, call)
                if not is_awaitable(result):
                    body = self._result(handler.result, result, call, "reply")
                    self._reply(Command.REPLY, call.route, Header(id=call.id), body)
                    return
            except Exception as raw:
                self._reply(Command.ERROR, call.route, Header(id=call.id), self._error_body(raw, call))
                return
            # It returned an awaitable after all (a decorated or partial ``async def`` that
            # inspection missed): serve this call and the method's next ones from a task.
            self.handlers.to_task(call.method)
            fn = lambda _request, _call, awaitable=result: awaitable  # noqa: E731
        self.active[key] = call
        # The scope exists before the task runs, so a CANCEL read in the same burst (before the
        # task started) still cancels it: trio cancels a scope on entry if it was cancelled.
        call.scope = trio.CancelScope(deadline=deadline)
        self.nursery.start_soon(self._serve, call, fn, request, handler)

    def _error_body(self, raw: Exception, call: Call) -> dict[str, Any]:
        mapped = self.actor.map_error(raw)
        if mapped is None:
            log.error("%s.%s failed:\n%s", self.actor.name, call.method, traceback.format_exc())
            mapped = Internal(f"{type(raw).__name__}: {raw}", traceback=traceback.format_exc())
        mapped.origin = mapped.origin or self.actor.name
        return mapped.to_wire()

    def _result(self, cls: type, value: Any, call: Call, what: str) -> dict[str, Any]:
        """The wire map of a handler's reply or chunk, checked against its declared class."""
        try:
            return result_to_wire(cls, value, what)
        except Internal as exc:  # the handler's bug: logged here, answered as Internal
            log.error("%s.%s: %s", self.actor.name, call.method, exc)
            raise

    async def _serve(self, call: Call, fn: Any, request: Any, handler: Handler) -> None:
        header = Header(id=call.id)
        scope = call.scope
        assert scope is not None
        try:
            with scope:
                if handler.streams:
                    agen = fn(request, call)
                    async with aclosing(agen):
                        async for chunk in agen:
                            body = self._result(handler.result, chunk, call, "stream chunk")
                            await self._send(Command.STREAM, call.route, header, body)
                    final: tuple[Command, Any] = (Command.END, None)
                else:
                    reply = await fn(request, call)
                    final = (Command.REPLY, self._result(handler.result, reply, call, "reply"))
            if scope.cancelled_caught:
                if call.cancelled_by_peer:
                    exc: SpecmemoError = Cancelled(f"call {call.id} was cancelled by its caller")
                elif self._stop.is_set():
                    exc = ActorDied(f"{self.actor.name} is stopping")
                else:
                    exc = DeadlineExceeded(f"{self.actor.name}.{call.method} ran past its deadline")
                exc.origin = self.actor.name
                final = (Command.ERROR, exc.to_wire())
        except Exception as raw:
            final = (Command.ERROR, self._error_body(raw, call))
        finally:
            self.active.pop((call.route, call.id), None)
        await self._send_frames(self._final_frames(final[0], call.route, header, final[1]))

    def _final_frames(self, command: Command, route: bytes, header: Header, body: Any) -> list[Any]:
        """The frames of a call's last message; a reply that cannot be sent becomes the error
        that says why, so the caller always gets an answer and the actor keeps serving."""
        try:
            return encode(command, route, header, body, max_bytes=self.max_message_bytes)
        except SpecmemoError as exc:  # the reply is too large
            exc.origin = exc.origin or self.actor.name
            return encode(Command.ERROR, route, header, exc.to_wire())
        except Exception as exc:  # a value msgpack cannot carry: a handler bug
            log.error("%s: a reply to call %d could not be encoded: %s", self.actor.name, header.id, exc)
            err = Internal(f"the reply could not be encoded: {type(exc).__name__}: {exc}", origin=self.actor.name)
            return encode(Command.ERROR, route, header, err.to_wire())

    def _reply(self, command: Command, route: bytes, header: Header, body: Any = None) -> None:
        """A final reply from synchronous code (the burst being dispatched): held, and sent
        with the burst's other replies by :meth:`_flush`."""
        self._outbox.append(self._final_frames(command, route, header, body))

    def _flush(self) -> None:
        """Send the held replies in order; from the first that finds the socket full, the
        rest go from one task that waits for room."""
        box, self._outbox = self._outbox, []
        for i, frames in enumerate(box):
            try:
                self.sock.send_multipart_nowait(frames)
            except zmq.Again:
                self._stalled += 1
                self.stalled_peak = max(self.stalled_peak, self._stalled)
                self.nursery.start_soon(self._send_stalled, box[i:])
                return

    async def _send_stalled(self, held: list[list[Any]]) -> None:
        try:
            for frames in held:
                await self._send_frames(frames)
        finally:
            self._stalled -= 1
            if not self._stalled:
                self._unstalled.set()
                self._unstalled = trio.Event()

    async def _send_frames(self, frames: list[Any]) -> None:
        """Send at once when there is room (the common case: no scope, no checkpoint), else
        wait for room, shielded: a reply that was produced is never dropped by a cancel."""
        try:
            self.sock.send_multipart_nowait(frames)
            return
        except zmq.Again:
            pass
        with trio.CancelScope(shield=True):
            await self.sock.send_multipart(frames)

    async def _send(self, command: Command, route: bytes, header: Header, body: Any = None) -> None:
        await self._send_frames(encode(command, route, header, body, max_bytes=self.max_message_bytes))


#: Result types seen from handlers that are not awaitable: ``inspect.isawaitable`` goes
#: through an ABC check (µs) and runs on every inline call, the type lookup does not.
def _body(msg: Message) -> Any:
    return unpack_body(frame_bytes(msg.raw_body), msg.buffers)
