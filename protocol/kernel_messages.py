"""The kernel's own methods (``kernel.*``) and the one every actor answers (``actor.metrics``)."""

from __future__ import annotations

from dataclasses import field

from .actor_state import ActorState
from .method_table import method
from .schema import message


@message
class Empty:
    pass


@message
class PingReply:
    pong: bool = True
    version: int = 1
    uptime_s: float = 0.0
    pid: int = 0
    max_message_bytes: int = 0  # the deployment's limit on one message (set your socket's MAXMSGSIZE)


@message
class ActorInfo:
    name: str
    kind: str
    pid: int
    state: ActorState  # see "Actor states"
    restarts: int
    uptime_s: float
    inflight: int


@message
class ActorsReply:
    actors: list[ActorInfo] = field(default_factory=list)
    endpoint: str = ""
    deployment: str = ""


@message
class ActorCounts:
    """What the kernel counted for one actor since it started."""

    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # typed errors answered, by code name
    heartbeat_misses: int = 0
    p50_ms: float | None = None  # of its recent calls, request to final reply (None: no call yet)
    p99_ms: float | None = None


@message
class KernelMetricsReply:
    actors: dict[str, ActorCounts] = field(default_factory=dict)  # by actor name


@message
class ActorMetricsReply:
    values: dict[str, float] = field(default_factory=dict)


method(
    "actor.metrics",
    Empty,
    ActorMetricsReply,
    role="operator",
    idempotent=True,
    doc="Every actor answers this: its domain gauges (KV bytes and γ, tokens/s, iterations, ...).",
)
method(
    "kernel.metrics",
    Empty,
    KernelMetricsReply,
    role="operator",
    idempotent=True,
    doc="What the kernel counted per actor: requests, errors by code, recent p50/p99 latency.",
)
method("kernel.ping", Empty, PingReply, role="client", idempotent=True, doc="Liveness of the kernel.")
method(
    "kernel.actors",
    Empty,
    ActorsReply,
    role="client",
    idempotent=True,
    doc="The registry: every configured or registered actor, its pid, state and load.",
)
