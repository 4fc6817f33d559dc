"""What every client does for one call: connect a DEALER, build a request's frames (validated
locally first), and turn the answer into its typed message or the typed error it carries.

A call names an actor instance; what its method takes and answers is declared per actor kind
(protocol/methods.py). The kind of an instance is its name unless the client's `kinds` map says
otherwise (the shipped configs name every actor after its kind). A call to an instance whose kind
is unknown, of a method nobody declares, sends its parameters as given and returns the reply map
as it came."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import zmq

from .curve import apply_client
from .errors import BadRequest, Internal, error_from_wire
from .methods import METHODS, MethodSpec
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


def spec_for(actor: str, method: str, kinds: Mapping[str, str] | None = None) -> MethodSpec | None:
    """The declared method a call of ``actor.method`` reaches, if the actor's kind is known."""
    kind = (kinds or {}).get(actor, actor)
    return METHODS.get(f"{kind}.{method}") or METHODS.get(f"actor.{method}")


def request_frames(
    call_id: int,
    actor: str,
    method: str,
    params: dict[str, Any],
    timeout: float | None,
    max_bytes: int,
    spec: MethodSpec | None = None,
) -> list[Any]:
    # An unknown kind skips local validation (the callee validates every request anyway).
    body: Any = params
    if spec is not None:
        # Validate locally first: a schema violation is the caller's bug, report it here.
        body = to_wire(from_wire(spec.request, params, "params"))
    # No deadline: none given, or one past what the header carries (2**63 ms).
    ms = math.inf if timeout is None else timeout * 1000
    deadline_ms = max(1, math.ceil(ms)) if ms < 2**63 else 0
    header = Header(id=call_id, method=method, deadline_ms=deadline_ms)
    return encode(Command.REQUEST, actor.encode(), header, body, max_bytes=max_bytes)


def decoded(spec: MethodSpec | None, body: Any) -> Any:
    """A reply or chunk body as its declared class (the map as it came when none is known); a
    body that does not fit is the callee's bug: :class:`Internal`."""
    cls = None if spec is None else spec.chunk if spec.streams else spec.reply
    if cls is None:
        return body
    try:
        return from_wire(cls, body, "reply")
    except BadRequest as exc:
        raise Internal(f"the answer does not fit {cls.__name__}: {exc}", detail={"expected": cls.__name__}) from None


def result_of(msg: Message, spec: MethodSpec | None) -> Any:
    """The value a finished call returns, or the typed error it raises (a stream's first chunk
    answering a plain call: BadRequest; the caller cancels the stream)."""
    if msg.command == Command.ERROR:
        raise error_from_wire(msg.body)
    if msg.command == Command.STREAM:
        raise BadRequest(f"{spec.name if spec else 'the method'} streams: call stream() for it")
    return decoded(spec, msg.body)


def stream_chunk(msg: Message, spec: MethodSpec | None) -> Any:
    """What one message of a stream yields: a chunk, nothing (END), or the typed error it raises.

    A plain REPLY to a streaming call is taken as its one and last chunk.
    """
    if msg.command == Command.END:
        return None
    if msg.command == Command.ERROR:
        raise error_from_wire(msg.body)
    return decoded(spec, msg.body)
