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
   others sleep on an event that the watcher or any operation sets. An operation that finds
   what a waiter wants wakes the watcher with ``trio.lowlevel.notify_closing`` (its
   ``wait_readable`` raises ``ClosedResourceError``, which the watcher takes as "look
   again" while the socket is open): unlike a cancel scope, that costs nothing on the
   common path where nobody interrupts, and a wait is on every message's path. A watcher
   that leaves (woken, interrupted or cancelled) hands the role on in ``finally``.

Every access to the socket goes through this class, because even ``getsockopt`` can consume
the edge.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import trio
import zmq
import zmq.backend

from .wire import recv_frames, send_frames

# the unbound getter (no attribute lookup on the hot path); EVENTS reads an int
_get: Callable[[Any, int], int] = zmq.backend.Socket.get  # type: ignore[assignment]
_EVENTS = int(zmq.EVENTS)
# Plain ints: pyzmq's flags are IntFlag members, and ``events & zmq.POLLIN`` on one costs
# 0.6 µs (an enum is built), 20 times the int operation; a wait does several.
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)


class TrioSocket:
    """A pyzmq socket driven by trio. Not thread-safe; one per trio run."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self._fd: int = sock.getsockopt(zmq.FD)  # type: ignore[assignment]  # FD is an int option
        self._changed = trio.Event()
        self._watching = False  # a task sleeps on the fd
        self._interrupted = False  # ... and has been told to look again
        self._closed = False
        self._waiters = {_POLLIN: 0, _POLLOUT: 0}

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
                await self._wait(_POLLOUT)
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
                waited = await self._wait(_POLLIN) or waited
                continue
            self._notify()
            if not waited:  # a wait that slept was this call's checkpoint; a second costs a pass
                await trio.lowlevel.cancel_shielded_checkpoint()
            return frames

    async def wait_readable(self) -> None:
        """Return once a message is queued (a checkpoint either way); nothing is received.

        With :meth:`recv_multipart_nowait`, a reader drains a burst with one wait, instead of
        one failed receive (an exception) and one wait per message.
        """
        self._check_open()
        if not await self._wait(_POLLIN):
            await trio.lowlevel.checkpoint()

    async def bursts(self, *, limit: int = 64, small: int = 5):
        """Async generator of bursts, for a socket's one reader loop: each a list of the
        messages queued (1 to ``limit``), read after one wait.

        A trio round trip per message costs more than handling a small one, and a reader that
        knows where a burst ends can send its answers together (one wake-up of the I/O thread
        for all of them). The reader may await between bursts (backpressure); use it under
        ``aclosing``.
        """
        while True:
            await self.wait_readable()
            burst = []
            for _ in range(limit):
                try:
                    burst.append(self.recv_multipart_nowait(small=small))
                except zmq.Again:
                    break
                if len(burst) == 1 and not self._events() & _POLLIN:
                    break  # a lone message: served now, not after a failed receive
            if burst:
                yield burst

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
        if self._closed:
            self._wake()
        elif self._waiters[_POLLIN] or self._waiters[_POLLOUT]:
            self._events()

    def _events(self, mine: int = 0) -> int:
        """Read ``EVENTS`` for a task about to wait on ``mine``, waking the other waiters that
        the value satisfies: the read may have consumed the edge they sleep on (rule 2)."""
        events = _get(self.sock, _EVENTS)
        want_in = self._waiters[_POLLIN] - (mine == _POLLIN)
        want_out = self._waiters[_POLLOUT] - (mine == _POLLOUT)
        if (want_in and events & _POLLIN) or (want_out and events & _POLLOUT):
            self._wake()
        return events

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
        if self._watching and not self._interrupted:
            self._interrupted = True
            trio.lowlevel.notify_closing(self._fd)

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
            self._watching, self._interrupted = True, False
            try:
                await trio.lowlevel.wait_readable(self._fd)
            except trio.ClosedResourceError:
                self._check_open()  # closed for real; else interrupted by _wake: look again
            finally:
                self._watching = False
                # Hand the role on: waiters re-check, one of them becomes the watcher.
                self._changed.set()
                self._changed = trio.Event()
