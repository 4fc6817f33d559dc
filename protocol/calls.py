"""What every client does for one call: connect a DEALER, build a request's frames (validated
locally first), and turn the answer into a value or the typed error it carries."""

from __future__ import annotations

import math
import os
from typing import Any

import zmq

from .curve import apply_client
from .errors import error_from_wire
from .methods import METHODS
from .schema import from_wire, to_wire
from .wire import Command, Header, Message, encode

DEFAULT_TIMEOUT = 30.0


def dealer(ctx: zmq.Context, endpoint: str, curve: dict[str, bytes] | None) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, b"c-" + os.urandom(6).hex().encode())
    if curve:
        apply_client(sock, curve)
    sock.connect(endpoint)
    return sock


def request_frames(
    call_id: int, actor: str, method: str, params: dict[str, Any], timeout: float | None, max_bytes: int
) -> list[Any]:
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


def result_of(msg: Message, actor: str, method: str) -> Any:
    """The value a finished call returns, or the typed error it raises."""
    if msg.command == Command.ERROR:
        raise error_from_wire(msg.body)
    return msg.body


def stream_chunk(msg: Message) -> Any:
    """What one message of a stream yields: a chunk, nothing (END), or the typed error it raises.

    A plain REPLY to a streaming call is taken as its one and last chunk.
    """
    if msg.command == Command.END:
        return None
    if msg.command == Command.ERROR:
        raise error_from_wire(msg.body)
    return msg.body
