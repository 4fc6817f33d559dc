"""The memory actor's methods: the KV budget, leases, grants and reservations.

Holders are "draft" and "target"; `actor` names the process that holds the lease, so the
memory actor can reclaim its blocks when the kernel reports that actor dead.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from .kernel_messages import Empty
from .method_table import method
from .schema import absent_if_none, message


@message
class AddHolder:
    holder: str
    bytes_per_token: int
    actor: str
    weight_bytes: int = 0  # the holder's model weights, counted beside its KV


@message
class HolderReply:
    budget: int
    block_tokens: int


@message
class SessionRef:
    session: str


@message
class OpenSession:
    session: str
    owner: str  # the actor that drives the session (its lease holder)


@message
class HasReply:
    has: bool


@message
class PrefillRequest:
    session: str
    keep: int
    add: int


@message
class GrantAnswer:
    """Blocks per holder after the call; sessions evicted to make room; holders to rebuild."""

    blocks: dict[str, int] = field(default_factory=dict)
    evicted: list[str] = field(default_factory=list)
    rebuild: list[str] = field(default_factory=list)
    gamma: int = 0
    width: int = 1  # the most children a tree node may have (1: a chain)
    forwards: int | None = None  # the most draft forwards (None: γ, one a node); the nodes past them are leaves
    rates: list[float] = field(default_factory=list)  # the session's rank acceptance rates a_1..a_width
    freed: int = 0
    error: list[str] | None = absent_if_none()  # [error class, message] for this session alone (absent: none)


@message
class GrantItem:
    session: str
    gamma: int | None = None
    limit: int | None = None
    width: int | None = None  # the widest tree (None: the memory actor's choice)
    forwards: int | None = None  # the most draft forwards (None: the memory actor's choice)


@message
class CommitItem:
    session: str
    accepted: int
    emitted: int
    tried: list[int] | None = None  # per rank: visited nodes with an r-th child
    hits: list[int] | None = None  # per rank: r-th children accepted


@message
class GrantBatch:
    requests: list[GrantItem]


@message
class CommitBatch:
    requests: list[CommitItem]


@message
class Answers:
    answers: list[GrantAnswer] = field(default_factory=list)


@message
class Freed:
    freed: int = 0
    sessions: list[str] = field(default_factory=list)


@message
class Costs:
    draft_s: float | None = None  # seconds per draft token
    m: int | None = None  # new tokens per session of the target forward timed
    target_s: float | None = None  # seconds of that target forward
    anchor: bool = False  # target_s is a calibration timing of the target alone (the curve's shape)


@message
class Usage:
    budget: int
    live: int
    peak: int
    free: int
    block_tokens: int
    sessions: dict[str, int] = field(default_factory=dict)
    holders: dict[str, int] = field(default_factory=dict)
    contexts: dict[str, int] = field(default_factory=dict)
    evictions: int = 0
    leases: dict[str, str] = field(default_factory=dict)  # holder -> actor
    weights: dict[str, int] = field(default_factory=dict)  # holder -> bytes of its model's weights
    memory_budget: int | None = None  # weights + KV budget, when the deployment sets one
    costs: Any = None  # the measured cost curve: {"draft_s", "target_s": {M: s}, "shape": {M: s}, "scale"}
    reserved: dict[str, int] = field(default_factory=dict)  # actor -> non-session bytes (solver plans, prefix stores)


@message
class Reserve:
    owner: str  # the actor holding the bytes (released when it dies)
    key: str  # what they are for (a solver's plan: one key per matrix)
    nbytes: int


@message
class ReserveReply:
    reserved: int
    evicted: list[str] = field(default_factory=list)  # idle sessions evicted to make room


@message
class Unreserve:
    owner: str
    key: str


method(
    "memory.reserve",
    Reserve,
    ReserveReply,
    role="actor",
    idempotent=True,
    doc="Hold bytes that are not KV (a solver's plan and vectors) in the same budget; OverBudget if they do not fit.",
)
method("memory.unreserve", Unreserve, Freed, role="actor", idempotent=True, doc="Give back what `reserve` held.")
method(
    "memory.add_holder",
    AddHolder,
    HolderReply,
    role="actor",
    idempotent=True,
    doc="Register a cache holder, its KV bytes per token and its weight bytes (a lease of `actor`).",
)
method("memory.open", OpenSession, Empty, role="actor", doc="Open a session owned by `owner`.")
method("memory.has", SessionRef, HasReply, role="actor", idempotent=True)
method(
    "memory.prefill",
    PrefillRequest,
    GrantAnswer,
    role="actor",
    doc="Start a turn: the context becomes keep + add tokens, all but the last resident.",
)
method(
    "memory.grant_batch",
    GrantBatch,
    Answers,
    role="actor",
    doc="Room for one speculative step per session; answers the γ each can afford.",
)
method(
    "memory.commit_batch",
    CommitBatch,
    Answers,
    role="actor",
    doc="End a step: accepted drafts and emitted tokens; rejected blocks are freed at once.",
)
method("memory.finish", SessionRef, Empty, role="actor", doc="End a turn: the session is idle (evictable).")
method("memory.release", SessionRef, Freed, role="actor", doc="Forget a session and free its blocks.")
method(
    "memory.release_holder",
    SessionRef,
    Freed,
    role="actor",
    doc="Reclaim every block of holder `session` (used when its actor died).",
)
method(
    "memory.observe_costs",
    Costs,
    Empty,
    role="actor",
    doc="A measured step (seconds per draft token, target forward of m tokens): the cost curve γ* is picked from.",
)
method(
    "memory.usage",
    Empty,
    Usage,
    role="operator",
    idempotent=True,
    doc="Budget, live and peak bytes, per session and per holder, leases.",
)
