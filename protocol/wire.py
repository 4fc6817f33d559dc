"""The envelope: how one message is laid out as ZeroMQ frames, and its codec.

A message is the multipart ``[magic, command, route, header, body, *buffers]``:

- ``magic``: ``b"SM"`` followed by one protocol-version byte;
- ``command``: one byte, a :class:`Command`;
- ``route``: the destination actor name (peer -> kernel) or the reply route (kernel -> actor);
- ``header``: msgpack map, routing metadata only (:class:`Header`);
- ``body``: msgpack payload of the method's schema;
- ``buffers``: raw frames holding numpy arrays, referenced from the body.

A ROUTER socket sees one more frame in front, the peer's routing id. The kernel routes on
``command`` and ``route`` and reads the small header (for the correlation id); it never
decodes the body.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import zmq
import zmq.backend

from .errors import BadRequest, MessageTooLarge, VersionMismatch

PROTOCOL_VERSION = 1
MAGIC_PREFIX = b"SM"
MAGIC = MAGIC_PREFIX + bytes([PROTOCOL_VERSION])

#: Default hard limit on one whole message (all frames) in bytes.
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
#: Arrays at most this large travel inline in the msgpack body (a copy is cheaper than a frame).
INLINE_ARRAY_BYTES = 1024
#: Array dtypes that may cross the wire (little-endian numeric types and bool).
ALLOWED_DTYPES = frozenset(
    np.dtype(t).str
    for t in (
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
    )
)
#: Key that marks a numpy array in a msgpack body.
ARRAY_KEY = "$nd"
_ARRAY_KEY_BYTES = ARRAY_KEY.encode()  # in the packed body whatever str type carries the key


class Command(enum.IntEnum):
    REQUEST = 1  # peer -> actor: call a method
    REPLY = 2  # actor -> caller: the one result of a call
    ERROR = 3  # actor/kernel -> caller: the call failed (body is an error map)
    CANCEL = 4  # caller -> actor: stop working on a call
    HEARTBEAT = 5  # kernel <-> actor: liveness, both ways
    READY = 6  # actor -> kernel: register under ``route`` (routable from now on)
    STREAM = 7  # actor -> caller: one chunk of a streaming reply
    END = 8  # actor -> caller: a streaming reply is complete
    BYE = 9  # kernel -> actor: please stop; actor -> kernel: I am stopping
    NOTICE = 10  # kernel -> actors: an event of the deployment (today: an actor died)


COMMAND_BYTES = {c: bytes([c]) for c in Command}
_COMMAND_AND_MAGIC = len(MAGIC) + 1  # the two fixed frames, in a message's size
#: Commands that end a call (the kernel forgets the call when it forwards one of these).
FINAL_COMMANDS = frozenset({Command.REPLY, Command.ERROR, Command.END})


@dataclass(slots=True)
class Header:
    """Routing metadata of one message (never the payload)."""

    id: int = 0  # correlation id, chosen by the caller, unique per caller
    method: str = ""  # method name, local to the actor (``"solve"``)
    deadline_ms: int = 0  # time budget left when sent, in ms; 0 = none
    schema: int = 1  # schema version of the method's body
    v: int = PROTOCOL_VERSION

    def pack(self) -> bytes:
        return msgpack.packb({"v": self.v, "id": self.id, "m": self.method, "dl": self.deadline_ms, "s": self.schema})

    @classmethod
    def unpack(cls, raw: bytes | memoryview) -> Header:
        try:
            d = msgpack.unpackb(raw)
        except Exception as exc:  # msgpack raises several unrelated types
            raise BadRequest(f"header is not valid msgpack: {exc}") from None
        if type(d) is not dict:
            raise BadRequest("header must be a msgpack map")
        hid, method, dl, schema = d.get("id", 0), d.get("m", ""), d.get("dl", 0), d.get("s", 1)
        # The common case in one test of exact types (msgpack yields exact int and str);
        # the checks below name the field that is wrong.
        if (
            type(hid) is int
            and type(method) is str
            and type(dl) is int
            and type(schema) is int
            and schema == 1
            and 0 <= hid < 2**64
            and 0 <= dl < 2**63
        ):
            return cls(hid, method, dl, schema)
        if not (isinstance(hid, int) and not isinstance(hid, bool) and 0 <= hid < 2**64):
            raise BadRequest("header field 'id' must be an unsigned integer")
        if not isinstance(method, str):
            raise BadRequest("header field 'm' (method) must be a string")
        if not (isinstance(dl, (int, float)) and not isinstance(dl, bool) and 0 <= dl < 2**63):
            raise BadRequest("header field 'dl' (deadline_ms) must be a finite non-negative number")
        if not (isinstance(schema, int) and not isinstance(schema, bool)) or schema != 1:
            raise BadRequest(f"header field 's' (schema) must be 1, the only body schema version, got {schema!r}")
        return cls(id=hid, method=method, deadline_ms=math.ceil(dl), schema=schema)

    def deadline_at(self, received_at: float | None = None) -> float:
        """Absolute ``time.monotonic()`` deadline, or ``inf`` when the header carries none."""
        if not self.deadline_ms:
            return float("inf")
        return (received_at if received_at is not None else time.monotonic()) + self.deadline_ms / 1000


@dataclass(slots=True)
class Message:
    """One decoded message (without the ROUTER's leading identity frame)."""

    command: Command
    route: bytes
    header: Header
    body: Any = None
    raw_body: Any = None  # undecoded body frame, for routers
    buffers: list[Any] = field(default_factory=list)


def check_magic(frame: bytes | memoryview) -> None:
    if frame == MAGIC:
        return
    magic = bytes(frame)
    if len(magic) == 3 and magic[:2] == MAGIC_PREFIX:
        raise VersionMismatch(
            f"peer speaks protocol version {magic[2]}, this side speaks {PROTOCOL_VERSION}",
            detail={"theirs": magic[2], "ours": PROTOCOL_VERSION},
        )
    raise BadRequest(f"bad magic frame {magic[:8]!r}: not a specmemo message")


_COMMAND_OF = {bytes([c]): c for c in Command}


def parse_command(frame: bytes | memoryview) -> Command:
    command = _COMMAND_OF.get(frame) if isinstance(frame, bytes) else _COMMAND_OF.get(bytes(frame))
    if command is None:
        raise BadRequest(f"unknown command frame {bytes(frame)[:8]!r}")
    return command


#: Frames smaller than this are copied on send: pyzmq's zero-copy path costs more than a memcpy.
ZERO_COPY_BYTES = 64 * 1024


_SNDMORE = int(zmq.SNDMORE)
#: pyzmq's Socket.send wrapper costs 5-10x the send itself for small frames (measured: a
#: six-frame message 30-65 µs through it, 5 µs through the backend method), so the hot path
#: calls the backend directly.
_backend_send = zmq.backend.Socket.send
_backend_recv = zmq.backend.Socket.recv


def send_frames(sock: Any, frames: Sequence[Any], flags: int = 0) -> None:
    """Send a multipart message: small parts copied, large arrays and received frames by reference."""
    flags = int(flags)
    more = flags | _SNDMORE
    last = len(frames) - 1
    i = 0
    try:
        for i, f in enumerate(frames):
            copy = type(f) is bytes or not (getattr(f, "nbytes", 0) >= ZERO_COPY_BYTES or hasattr(f, "buffer"))
            _backend_send(sock, f, more if i < last else flags, copy, False)
    except Exception:
        # ZeroMQ refuses a message (EAGAIN, EHOSTUNREACH) at its first part only; a later part
        # fails only for a bad frame. End the half-sent message with an empty part, or the
        # socket would glue the next message onto it (and a ROUTER send it to this peer).
        if i:
            _backend_send(sock, b"", flags, True, False)
        raise


def recv_frames(sock: Any, flags: int = 0, small: int = 5, user_ids: list | None = None) -> list[Any]:
    """Receive a multipart message: the first ``small`` parts as bytes, the rest as zero-copy frames.

    The envelope frames are small and read often; buffers (arrays) may be large. With a list
    as ``user_ids``, the ZAP User-Id the message came with (under CURVE the z85 public key of
    the peer's connection; None without authentication) is appended to it.
    """
    # Each part arrives as a zmq.Frame, whose ``more`` flag is read from the message itself:
    # asking the socket (getsockopt RCVMORE) goes through pyzmq's option enum, 1-2 µs a part.
    frame = _backend_recv(sock, int(flags), False, False)
    if user_ids is not None:
        user_ids.append(frame.get("User-Id"))
    frames: list[Any] = [frame.bytes]
    n = 1
    while frame.more:
        frame = _backend_recv(sock, 0, False, False)
        frames.append(frame.bytes if n < small else frame)
        n += 1
    return frames


def frame_bytes(frame: Any) -> memoryview | bytes:
    """The contents of a frame received with ``copy=False`` (or of a plain bytes frame)."""
    if type(frame) is bytes:  # the envelope frames: first, and without a failed attribute lookup
        return frame
    return frame.buffer if hasattr(frame, "buffer") else frame


# ---------------------------------------------------------------- body codec with arrays


def pack_body(body: Any) -> tuple[bytes, list[Any]]:
    """msgpack ``body``; numpy arrays larger than ``INLINE_ARRAY_BYTES`` go out as frames.

    Returns the body bytes and the list of buffers (arrays, sent zero-copy).
    """
    try:
        # Most bodies are plain maps: no hook, no closure (msgpack calls ``default`` only
        # for what it cannot pack itself, and then the general path below runs).
        return msgpack.packb(body), []
    except (TypeError, OverflowError):  # e.g. an int beyond 64 bits: the hook names it
        pass
    buffers: list[Any] = []

    def default(obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            arr = obj if obj.dtype.byteorder != ">" else obj.astype(obj.dtype.newbyteorder("<"))
            if arr.dtype.str not in ALLOWED_DTYPES:
                raise TypeError(f"arrays of dtype {arr.dtype} cannot cross the wire")
            if not arr.flags.c_contiguous:
                arr = arr.copy(order="C")
            if arr.nbytes <= INLINE_ARRAY_BYTES:
                return {ARRAY_KEY: [arr.dtype.str, list(arr.shape), arr.tobytes()]}
            buffers.append(arr)
            return {ARRAY_KEY: [arr.dtype.str, list(arr.shape), len(buffers) - 1]}
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, (tuple, set, frozenset)):
            return list(obj)
        raise TypeError(f"cannot encode {type(obj).__name__} on the wire")

    return msgpack.packb(body, default=default, use_bin_type=True), buffers


def unpack_body(raw: bytes | memoryview, buffers: Sequence[Any] = ()) -> Any:
    """Decode a body; array references become read-only numpy views of their frames.

    Raises :class:`BadRequest` for bad msgpack, a bad array reference, or a buffer whose
    size does not match its declared dtype and shape.
    """
    if not buffers and type(raw) is bytes and _ARRAY_KEY_BYTES not in raw:
        # No array anywhere (an array's map key would show in the bytes): no per-map hook.
        try:
            return msgpack.unpackb(raw, strict_map_key=False, raw=False)
        except Exception as exc:
            raise BadRequest(f"body is not valid msgpack: {type(exc).__name__}: {exc}") from None
    views = [frame_bytes(b) for b in buffers]

    def hook(obj: dict) -> Any:
        if len(obj) == 1 and ARRAY_KEY in obj:
            return _decode_array(obj[ARRAY_KEY], views)
        return obj

    try:
        return msgpack.unpackb(raw, object_hook=hook, strict_map_key=False, raw=False)
    except BadRequest:
        raise
    except Exception as exc:
        raise BadRequest(f"body is not valid msgpack: {type(exc).__name__}: {exc}") from None


def _decode_array(spec: Any, views: Sequence[Any]) -> np.ndarray:
    if not (isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str) and isinstance(spec[1], list)):
        raise BadRequest(f"malformed array reference {spec!r:.120}")
    dtype_str, shape, ref = spec
    if dtype_str not in ALLOWED_DTYPES:
        raise BadRequest(f"array dtype {dtype_str!r} is not allowed")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**48 for d in shape) or len(shape) > 8:
        raise BadRequest(f"array shape {shape!r:.120} is invalid")
    dtype = np.dtype(dtype_str)
    if isinstance(ref, (bytes, bytearray)):
        data: Any = ref
    elif isinstance(ref, int) and not isinstance(ref, bool) and 0 <= ref < len(views):
        data = views[ref]
    else:
        raise BadRequest(f"array reference {ref!r:.40} names no buffer (message has {len(views)})")
    expected = math.prod(shape) * dtype.itemsize  # exact: int64 products wrap around
    if len(memoryview(data).cast("B")) != expected:
        raise BadRequest(
            f"buffer holds {len(memoryview(data).cast('B'))} bytes, but dtype "
            f"{dtype_str} and shape {shape} need {expected}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


# ---------------------------------------------------------------- whole messages


def encode(
    command: Command, route: bytes, header: Header, body: Any = None, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> list[Any]:
    """Frames of one message, ready for ``send_multipart(copy=False)``."""
    raw_body, buffers = pack_body(body)
    packed = header.pack()
    frames: list[Any] = [MAGIC, COMMAND_BYTES[command], route, packed, raw_body, *buffers]
    size = _COMMAND_AND_MAGIC + len(route) + len(packed) + len(raw_body) + sum(b.nbytes for b in buffers)
    if size > max_bytes:
        raise MessageTooLarge(
            f"message of {size} bytes exceeds the limit of {max_bytes} bytes", detail={"size": size, "limit": max_bytes}
        )
    return frames


def frames_size(frames: Sequence[Any]) -> int:
    return sum(map(len, frames))  # bytes and zmq.Frame both have a length


def decode(frames: Sequence[Any], *, decode_body: bool = True) -> Message:
    """Decode the frames of one message (without a ROUTER identity frame).

    Raises :class:`BadRequest` or :class:`VersionMismatch`, never anything else.
    """
    if len(frames) < 5:
        raise BadRequest(f"a message has at least 5 frames, got {len(frames)}")
    check_magic(frame_bytes(frames[0]))
    command = parse_command(frame_bytes(frames[1]))
    header = Header.unpack(frame_bytes(frames[3]))
    route = bytes(frame_bytes(frames[2]))
    buffers = list(frames[5:])
    raw_body = frames[4]
    body = unpack_body(frame_bytes(raw_body), buffers) if decode_body else None
    return Message(command, route, header, body, raw_body, buffers)


def error_body(exc: Any) -> dict[str, Any]:
    return exc.to_wire()
