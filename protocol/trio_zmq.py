"""Async send/recv on a pyzmq socket under trio.

The file descriptor of a ZeroMQ socket is edge-triggered: it becomes readable when the
socket's *events may have changed*, and reading ``EVENTS`` (or doing any operation) resets
it. A naive "check EVENTS, then wait_readable" misses edges that another task's operation
consumed, and hangs. The rules this adapter follows (all in :meth:`TrioSocket._wait`):

1. always try the operation with ``NOBLOCK`` first;
2. after every operation that others are waiting behind, re-read ``EVENTS`` (the operation may
   have consumed the edge) and wake the waiters when a condition they wait for now holds;
3. a completed operation is never undone by a cancellation: the checkpoint after it is
   shielded, so a message sent or received is always reported as such;
4. only one task (the watcher) sleeps on the fd, because trio allows one waiter per fd; the
   others sleep on an event that the watcher or any operation sets. A watcher that is
   cancelled hands the role on in ``finally``.

Every access to the socket goes through this class, because even ``getsockopt`` can consume
the edge.
"""
from __future__ import annotations

from typing import Any, Sequence

import trio
import zmq
import zmq.backend

from .wire import recv_frames, send_frames

_get = zmq.backend.Socket.get
_EVENTS = int(zmq.EVENTS)


class TrioSocket:
    """A pyzmq socket driven by trio. Not thread-safe; one per trio run."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self._fd = sock.getsockopt(zmq.FD)
        self._changed = trio.Event()
        self._watcher: trio.CancelScope | None = None
        self._watching = False
        self._closed = False
        self._waiters = {zmq.POLLIN: 0, zmq.POLLOUT: 0}

    # ---------------------------------------------------------------- operations

    async def send_multipart(self, frames: Sequence[Any]) -> None:
        """Send one multipart message, waiting while the socket is at its high-water mark.

        Raises ``zmq.ZMQError`` for errors other than EAGAIN (e.g. EHOSTUNREACH on a
        ROUTER with ROUTER_MANDATORY), and ``trio.ClosedResourceError`` after :meth:`close`.
        """
        while True:
            self._check_open()
            try:
                send_frames(self.sock, frames, zmq.NOBLOCK)
            except zmq.Again:
                await self._wait(zmq.POLLOUT)
                continue
            self._notify()
            await trio.lowlevel.cancel_shielded_checkpoint()
            return

    def send_multipart_nowait(self, frames: Sequence[Any]) -> None:
        """Send without waiting; raises ``zmq.Again`` when the socket would block."""
        self._check_open()
        send_frames(self.sock, frames, zmq.NOBLOCK)
        self._notify()

    async def recv_multipart(self, *, small: int = 5) -> list[Any]:
        """Receive one multipart message: ``small`` leading parts as bytes, the rest as frames."""
        waited = False
        while True:
            self._check_open()
            try:
                frames = recv_frames(self.sock, zmq.NOBLOCK, small)
            except zmq.Again:
                waited = await self._wait(zmq.POLLIN) or waited
                continue
            self._notify()
            if not waited:   # a wait that slept was this call's checkpoint; a second costs a pass
                await trio.lowlevel.cancel_shielded_checkpoint()
            return frames

    async def wait_readable(self) -> None:
        """Return once a message is queued (a checkpoint either way); nothing is received.

        With :meth:`recv_multipart_nowait`, a reader drains a burst with one wait, instead of
        one failed receive (an exception) and one wait per message.
        """
        self._check_open()
        if not await self._wait(zmq.POLLIN):
            await trio.lowlevel.checkpoint()

    async def messages(self, *, burst: int = 64, small: int = 5):
        """Async generator of the messages received, for a socket's one reader loop.

        It waits once, then yields what is queued (up to ``burst``) with no checkpoint in
        between: a trio round trip per message costs more than handling a small one. The
        reader may await between messages (backpressure); use it under ``aclosing``.
        """
        while True:
            await self.wait_readable()
            for _ in range(burst):
                try:
                    frames = self.recv_multipart_nowait(small=small)
                except zmq.Again:
                    break
                yield frames

    def recv_multipart_nowait(self, *, small: int = 5) -> list[Any]:
        """Receive one message if one is queued; raises ``zmq.Again`` otherwise (no checkpoint)."""
        self._check_open()
        frames = recv_frames(self.sock, zmq.NOBLOCK, small)
        self._notify()
        return frames

    def getsockopt(self, option: int) -> Any:
        value = self.sock.getsockopt(option)
        self._notify()
        return value

    def setsockopt(self, option: int, value: Any) -> None:
        self.sock.setsockopt(option, value)
        self._notify()

    def close(self, linger: int = 0) -> None:
        if self._closed:
            return
        self._closed = True
        trio.lowlevel.notify_closing(self._fd)
        self._notify()
        self.sock.close(linger=linger)

    @property
    def closed(self) -> bool:
        return self._closed

    # ---------------------------------------------------------------- the one waiting place

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("socket was closed")

    def _notify(self) -> None:
        """After an operation: wake the waiters if what they wait for is now ready.

        With nobody waiting there is nothing to do (a task that comes to wait checks
        ``EVENTS`` before it sleeps). Reading ``EVENTS`` here may consume the edge, but then
        its value shows the new state, and any later change raises a new edge.
        """
        want_in, want_out = self._waiters[zmq.POLLIN], self._waiters[zmq.POLLOUT]
        if not (want_in or want_out) or self._closed:
            if self._closed:
                self._wake()
            return
        events = _get(self.sock, _EVENTS)
        if (want_in and events & zmq.POLLIN) or (want_out and events & zmq.POLLOUT):
            self._wake()

    def _events(self, mine: int = 0) -> int:
        """Read ``EVENTS`` for a task about to wait on ``mine``, waking the other waiters that
        the value satisfies: the read may have consumed the edge they sleep on (rule 2)."""
        events = _get(self.sock, _EVENTS)
        want_in = self._waiters[zmq.POLLIN] - (mine == zmq.POLLIN)
        want_out = self._waiters[zmq.POLLOUT] - (mine == zmq.POLLOUT)
        if (want_in and events & zmq.POLLIN) or (want_out and events & zmq.POLLOUT):
            self._wake()
        return events

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
        if self._watcher is not None:
            self._watcher.cancel()

    async def _wait(self, flag: int) -> bool:
        """Return once ``EVENTS`` has ``flag`` set; True if it had to sleep (a checkpoint)."""
        self._waiters[flag] += 1
        try:
            return await self._wait_counted(flag)
        finally:
            self._waiters[flag] -= 1

    async def _wait_counted(self, flag: int) -> bool:
        slept = False
        while True:
            self._check_open()
            if self._events(flag) & flag:
                return slept
            slept = True
            if self._watching:
                await self._changed.wait()
                continue
            self._watching = True
            try:
                with trio.CancelScope() as scope:
                    self._watcher = scope
                    await trio.lowlevel.wait_readable(self._fd)
            finally:
                self._watcher = None
                self._watching = False
                # Hand the role on: waiters re-check, one of them becomes the watcher.
                self._changed.set()
                self._changed = trio.Event()
