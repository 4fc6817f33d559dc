"""Every method of every actor, in one place: name, request, reply, stream chunk.

``docs/protocol.md`` documents these tables for writers of other clients. A method is
addressed as ``<actor kind>.<method>``; a request names the actor instance in its route
frame and the bare method in its header.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import UnknownMethod
from .schema import from_wire, message


@dataclass(frozen=True, slots=True)
class MethodSpec:
    name: str                    # "<kind>.<method>"
    request: type
    reply: type | None           # None for streaming methods (they END instead)
    chunk: type | None = None    # stream chunk schema, for streaming methods
    idempotent: bool = False     # safe to retry after ActorDied
    doc: str = ""

    @property
    def streams(self) -> bool:
        return self.chunk is not None


METHODS: dict[str, MethodSpec] = {}


def method(name: str, request: type, reply: type | None = None, *, chunk: type | None = None,
           idempotent: bool = False, doc: str = "") -> MethodSpec:
    if name in METHODS:
        raise ValueError(f"method {name} declared twice")
    spec = MethodSpec(name, request, reply, chunk, idempotent, doc)
    METHODS[name] = spec
    return spec


def lookup(kind: str, method_name: str) -> MethodSpec:
    spec = METHODS.get(f"{kind}.{method_name}")
    if spec is None:
        raise UnknownMethod(f"actor kind '{kind}' has no method '{method_name}'",
                            detail={"kind": kind, "method": method_name})
    return spec


def validate_request(kind: str, method_name: str, body: Any) -> Any:
    return from_wire(lookup(kind, method_name).request, body, "params")


# ---------------------------------------------------------------- kernel


@message
class Empty:
    pass


@message
class PingReply:
    pong: bool = True
    version: int = 1
    uptime_s: float = 0.0
    pid: int = 0


@message
class ActorInfo:
    name: str
    kind: str
    pid: int
    state: str             # starting | ready | restarting | stopped | failed | external
    restarts: int
    uptime_s: float
    inflight: int


@message
class ActorsReply:
    actors: list[ActorInfo] = field(default_factory=list)
    endpoint: str = ""
    deployment: str = ""


@message
class ReadyBody:
    kind: str
    pid: int
    methods: list[str] = field(default_factory=list)


method("kernel.ping", Empty, PingReply, idempotent=True, doc="Liveness of the kernel.")
method("kernel.actors", Empty, ActorsReply, idempotent=True,
       doc="The registry: every configured or registered actor, its pid, state and load.")

# ---------------------------------------------------------------- echo (tests and benchmarks)


@message
class EchoRequest:
    data: Any = None


@message
class EchoReply:
    data: Any = None


@message
class SleepRequest:
    seconds: float


@message
class SleepReply:
    slept: float


@message
class FailRequest:
    kind: str = "internal"   # internal | bad_request | exit
    message: str = "failure requested"


@message
class CountRequest:
    n: int
    delay: float = 0.0


@message
class CountChunk:
    i: int


method("echo.echo", EchoRequest, EchoReply, idempotent=True, doc="Returns `data` unchanged (arrays included).")
method("echo.sleep", SleepRequest, SleepReply, doc="Sleeps, honouring deadline and cancel.")
method("echo.fail", FailRequest, Empty,
       doc="Fails on request: `internal` raises, `bad_request` refuses, `exit` kills the process.")
method("echo.count", CountRequest, chunk=CountChunk, doc="Streams i = 0..n-1, one chunk each.")

