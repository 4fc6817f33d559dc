"""The kernel's control messages: the READY and NOTICE bodies, and the frames of every message
the kernel sends: of its own (its replies and errors, HEARTBEAT, BYE, NOTICE, a CANCEL), and
the messages it passes on from one peer to another.

Each control body is a message class, built with :func:`pack_control` and decoded with
:func:`unpack_control`, the same on both sides: the actor runtime packs READY and unpacks
NOTICE, the kernel the other way round.
"""

from __future__ import annotations

import enum
from dataclasses import field
from typing import Any, TypeVar

import msgpack

from .errors import BadRequest
from .schema import from_wire, message, to_wire
from .wire import COMMAND_BYTES, MAGIC, Command, Header

T = TypeVar("T")

#: The route frame of what the kernel sends of its own, and the name it is called by.
KERNEL_ROUTE = b"kernel"
#: msgpack nil: the body of a message that carries none.
NIL = b"\xc0"
_NO_CALL = Header().pack()  # the header of a message that is not about a call


@message
class ReadyBody:
    """READY (actor -> kernel): register the actor named in the route frame."""

    kind: str
    pid: int
    methods: list[str] = field(default_factory=list)


class NoticeEvent(enum.StrEnum):
    ACTOR_DIED = "actor_died"  # `name` went away; its calls in flight failed with ActorDied


@message
class Notice:
    """NOTICE (kernel -> every registered actor): an event of the deployment."""

    event: NoticeEvent
    name: str = ""  # the actor it is about


def pack_control(msg: Any) -> bytes:
    """The body bytes of a control message (a message class instance)."""
    return msgpack.packb(to_wire(msg))


def unpack_control(cls: type[T], raw: bytes | memoryview, where: str = "body") -> T:
    """Decode the body of a control message as ``cls``; :class:`BadRequest` if it is not one."""
    try:
        body = msgpack.unpackb(raw)
    except Exception as exc:  # msgpack raises several unrelated types
        raise BadRequest(f"{where} is not valid msgpack: {type(exc).__name__}") from None
    return from_wire(cls, body, where)


def kernel_frames(
    peer: bytes, command: Command, call_id: int = 0, body: bytes = NIL, route: bytes = KERNEL_ROUTE
) -> list[Any]:
    """The frames of a message the kernel sends of its own to ``peer`` (its ROUTER identity).

    ``call_id`` names the call it answers (0: none); ``route`` is ``kernel`` except for a
    CANCEL, which carries the route of the caller whose call it ends.
    """
    header = Header(id=call_id).pack() if call_id else _NO_CALL
    return [peer, MAGIC, COMMAND_BYTES[command], route, header, body]


def forwarded_frames(frames: list[Any], to: bytes, route: bytes) -> list[Any]:
    """A received message (``frames`` with the sender's ROUTER identity first) passed on to
    ``to`` with ``route`` in its route frame (the sender's identity or an actor's name); magic,
    command, header, body and buffers go as they came, never decoded."""
    return [to, frames[1], frames[2], route, *frames[4:]]
