"""What the kernel sends: held while a batch is routed and sent together, and the refusals it
answers late (the tarpit)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any

import zmq

from specmemo.protocol.wire import send_frames

#: Most refusals held back at once (see :class:`Tarpit`); past it they are answered at once.
TARPIT_MAX = 65536


class Outbox:
    """Sends on the kernel's ROUTER.

    While a batch is being routed (:attr:`holding`) a message is held and goes out with the
    others at the end of the batch (or every ``FLUSH_EVERY``), in order. Sent one by one, each
    message can wake libzmq's I/O thread and the peer on its own, and on a small machine those
    wake-ups cost more CPU than the routing itself (docs/decisions.md).
    """

    def __init__(self, socket: Any, warn_once: Callable[[str, str], None]) -> None:
        self.socket = socket
        self.warn_once = warn_once
        self.held: list[tuple[list[Any], Any]] = []
        self.holding = False

    def send(self, frames: list[Any], on_fail: Callable[[zmq.ZMQError], None] | None = None) -> None:
        """Send ``frames``; what cannot be delivered goes to ``on_fail(exc)``, or is dropped
        with one log line a second."""
        self.held.append((frames, on_fail))
        if not self.holding:
            self.flush()

    def flush(self) -> None:
        """Send the held messages in order; what a failure handler sends joins the queue."""
        box, holding = self.held, self.holding
        self.holding = True
        try:
            i = 0
            while i < len(box):
                frames, on_fail = box[i]
                i += 1
                try:
                    try:
                        send_frames(self.socket, frames, zmq.NOBLOCK)
                    except zmq.ZMQError as exc:
                        if on_fail is None:
                            self.warn_once(f"send-{exc.errno}", f"could not deliver a message: {exc}")
                        else:
                            on_fail(exc)
                except Exception as bug:  # a bug never takes the kernel down
                    self.warn_once("route-bug", f"internal error while sending: {type(bug).__name__}: {bug}")
        finally:
            box.clear()
            self.holding = holding


class Tarpit:
    """Refusals (Overloaded, to a client past its own limit) held until they are due.

    A client that sends again at once, as a flood does, is slowed to a call per delay per
    connection instead of costing the kernel a round trip every few microseconds
    (tests/test_security_curve.py, the flood).
    """

    def __init__(self, delay_s: float, limit: int = TARPIT_MAX) -> None:
        self.delay_s = delay_s
        self.limit = limit
        self._heap: list[tuple[float, int, list[Any]]] = []  # (due, sequence, frames)
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def hold(self, frames: list[Any], now: float, jitter: float) -> bool:
        """Hold ``frames`` until ``now + delay * jitter``; False (not held) when the tarpit is
        off or full: send them at once."""
        if not self.delay_s or len(self._heap) >= self.limit:
            return False
        heapq.heappush(self._heap, (now + self.delay_s * jitter, next(self._seq), frames))
        return True

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def due(self, now: float) -> list[list[Any]]:
        """Take the held messages due by ``now``, in due order."""
        out = []
        while self._heap and self._heap[0][0] <= now:
            out.append(heapq.heappop(self._heap)[2])
        return out
