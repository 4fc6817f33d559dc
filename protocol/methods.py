"""Every method of every actor, in one place: name, request, reply, stream chunk.

``docs/protocol.md`` documents these tables for writers of other clients. A method is
addressed as ``<actor kind>.<method>``; a request names the actor instance in its route
frame and the bare method in its header.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import UnknownMethod
from .schema import from_wire, message


#: Who may call a method, least privileged first; each role may call what the ones before it may.
#: "client": any peer the deployment admits (the SDK, the CLI, the HTTP gateway).
#: "operator": views across every client (metrics, every session id): over ipc and tcp without
#: CURVE every peer is an operator; with CURVE only a key in `curve_operators` (or an actor's).
#: "actor": only a peer registered as an actor (memory grants and releases, draft proposals:
#: one actor's calls to another). The kernel refuses anyone else with Unauthorized before routing.
ROLES = ("client", "operator", "actor")


def may_call(peer_role: str, method_role: str) -> bool:
    """Whether a peer holding `peer_role` may call a method declared with `method_role`."""
    return ROLES.index(peer_role) >= ROLES.index(method_role)


def role_of(kind: str, method_name: str) -> str:
    """The role a call of `kind.method_name` needs (an unknown method: "client"; its actor answers
    UnknownMethod)."""
    spec = METHODS.get(f"{kind}.{method_name}") or METHODS.get(f"actor.{method_name}")
    return spec.role if spec is not None else "client"


@dataclass(frozen=True, slots=True)
class MethodSpec:
    name: str                    # "<kind>.<method>"
    request: type
    reply: type | None           # None for streaming methods (they END instead)
    chunk: type | None = None    # stream chunk schema, for streaming methods
    idempotent: bool = False     # safe to retry after ActorDied
    doc: str = ""
    role: str = "client"         # who may call it (ROLES)

    @property
    def streams(self) -> bool:
        return self.chunk is not None


METHODS: dict[str, MethodSpec] = {}


def method(name: str, request: type, reply: type | None = None, *, role: str, chunk: type | None = None,
           idempotent: bool = False, doc: str = "") -> MethodSpec:
    """Declare a method; `role` (required: a new method must say who may call it) is one of ROLES."""
    if name in METHODS:
        raise ValueError(f"method {name} declared twice")
    if role not in ROLES:
        raise ValueError(f"method {name}: role {role!r} is not one of {ROLES}")
    spec = MethodSpec(name, request, reply, chunk, idempotent, doc, role)
    METHODS[name] = spec
    return spec


def lookup(kind: str, method_name: str) -> MethodSpec:
    spec = METHODS.get(f"{kind}.{method_name}") or METHODS.get(f"actor.{method_name}")
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
    max_message_bytes: int = 0    # the deployment's limit on one message (set your socket's MAXMSGSIZE)


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


@message
class KernelMetricsReply:
    actors: dict[str, Any] = field(default_factory=dict)   # name -> requests, errors by code, p50_ms, p99_ms


@message
class ActorMetricsReply:
    values: dict[str, float] = field(default_factory=dict)


method("actor.metrics", Empty, ActorMetricsReply, role="operator", idempotent=True,
       doc="Every actor answers this: its domain gauges (KV bytes and γ, tokens/s, iterations, ...).")
method("kernel.metrics", Empty, KernelMetricsReply, role="operator", idempotent=True,
       doc="What the kernel counted per actor: requests, errors by code, recent p50/p99 latency.")
method("kernel.ping", Empty, PingReply, role="client", idempotent=True, doc="Liveness of the kernel.")
method("kernel.actors", Empty, ActorsReply, role="client", idempotent=True,
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


method("echo.echo", EchoRequest, EchoReply, role="client", idempotent=True, doc="Returns `data` unchanged (arrays included).")
method("echo.sleep", SleepRequest, SleepReply, role="client", doc="Sleeps, honouring deadline and cancel.")
method("echo.fail", FailRequest, Empty,
       role="client", doc="Fails on request: `internal` raises, `bad_request` refuses, `exit` kills the process.")
method("echo.count", CountRequest, role="client", chunk=CountChunk, doc="Streams i = 0..n-1, one chunk each.")


# ---------------------------------------------------------------- solver (PARS3 SpMV, MRS)


@message
class RegisterMatrix:
    """A matrix as Matrix Market bytes (``mtx``) or as CSR arrays (``indptr``, ``indices``, ``data``)."""
    id: str = ""                       # "" = the actor picks one
    kind: str = "skew"                 # skew | symmetric
    mtx: bytes | None = None
    n: int = 0                         # rows (= columns) for CSR input
    indptr: np.ndarray | None = None   # int32 or int64 [n + 1]
    indices: np.ndarray | None = None  # int32 or int64 [nnz], column of each value
    data: np.ndarray | None = None     # float64 [nnz]
    threads: int = 0                   # 0 = the actor's default
    tol: float = 1e-12                 # skew/symmetry check tolerance (relative to max |a_ij|)
    shared: bool = False               # visible to every client (default: to its registering client only)
    precision: str = "float64"         # float32: values stored rounded (fewer bytes a product; see docs/spmv.md)


@message
class MatrixReport:
    id: str
    kind: str
    n: int
    nnz: int
    nnz_stored: int
    bandwidth_before: int
    bandwidth_after: int
    threads: int
    share_inner: float
    share_middle: float
    share_outer: float
    window_rows: int
    build_seconds: float
    index_bytes: int = 4               # per stored entry: 2 with 16-bit offsets from the row
    value_bytes: int = 8               # per stored entry: 4 with float32 values


@message
class MatrixId:
    id: str


@message
class MatvecRequest:
    id: str
    x: np.ndarray                      # float64 [n]


@message
class MatvecReply:
    y: np.ndarray                      # float64 [n]


@message
class SolveRequest:
    id: str
    b: np.ndarray                      # float64 [n]
    alpha: float = 1.0
    tol: float = 1e-10
    maxiter: int = 0                   # 0 = 10 n
    history: bool = False              # return the residual history too


@message
class SolveReply:
    x: np.ndarray                      # float64 [n]
    converged: bool
    iterations: int
    residual: float                    # true ||b - (αI + S)x|| / ||b||
    seconds: float
    history: np.ndarray | None = None   # float64 [iterations], relative residual after each


@message
class Dropped:
    dropped: bool


@message
class MatrixList:
    matrices: list[MatrixReport] = field(default_factory=list)


method("solver.register", RegisterMatrix, MatrixReport,
       role="client", doc="Check, reorder (RCM) and split a matrix once; later calls reuse the plan.")
method("solver.describe", MatrixId, MatrixReport, role="client", idempotent=True, doc="The plan's report.")
method("solver.matvec", MatvecRequest, MatvecReply, role="client", idempotent=True, doc="y = S x.")
method("solver.solve", SolveRequest, SolveReply, role="client", idempotent=True,
       doc="Solve (αI + S) x = b by MRS (one SpMV per iteration).")
method("solver.drop", MatrixId, Dropped, role="client", idempotent=True, doc="Forget a matrix.")
method("solver.list", Empty, MatrixList, role="client", idempotent=True, doc="Every registered matrix.")

# ---------------------------------------------------------------- memory (the KV budget)
# Holders are "draft" and "target"; `actor` names the process that holds the lease, so the
# memory actor can reclaim its blocks when the kernel reports that actor dead.


@message
class AddHolder:
    holder: str
    bytes_per_token: int
    actor: str
    weight_bytes: int = 0     # the holder's model weights, counted beside its KV


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
    owner: str                         # the actor that drives the session (its lease holder)


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
    width: int = 1                     # the tree's width (1: a chain)
    freed: int = 0
    error: list[str] | None = None     # [error class, message] for this session alone


@message
class GrantItem:
    session: str
    gamma: int | None = None
    limit: int | None = None
    width: int | None = None           # the widest tree (None: the memory actor's choice)


@message
class CommitItem:
    session: str
    accepted: int
    emitted: int
    tried: list[int] | None = None     # per rank: visited nodes with an r-th child
    hits: list[int] | None = None      # per rank: r-th children accepted


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
    draft_s: float | None = None      # seconds per draft token
    m: int | None = None              # new tokens per session of the target forward timed
    target_s: float | None = None     # seconds of that target forward
    draft_by_m: dict[str, float] | None = None   # {M: seconds} of draft forwards of M tokens (trees)


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
    leases: dict[str, str] = field(default_factory=dict)   # holder -> actor
    weights: dict[str, int] = field(default_factory=dict)  # holder -> bytes of its model's weights
    memory_budget: int | None = None   # weights + KV budget, when the deployment sets one
    costs: Any = None                   # the measured cost curve: {"draft_s", "target_s": {M: s}}
    reserved: dict[str, int] = field(default_factory=dict)   # actor -> bytes held that are not KV (solver plans)


@message
class Reserve:
    owner: str                # the actor holding the bytes (released when it dies)
    key: str                  # what they are for (a solver's plan: one key per matrix)
    nbytes: int


@message
class ReserveReply:
    reserved: int
    evicted: list[str] = field(default_factory=list)   # idle sessions evicted to make room


@message
class Unreserve:
    owner: str
    key: str


method("memory.reserve", Reserve, ReserveReply, role="actor", idempotent=True,
       doc="Hold bytes that are not KV (a solver's plan and vectors) in the same budget; OverBudget if they do not fit.")
method("memory.unreserve", Unreserve, Freed, role="actor", idempotent=True, doc="Give back what `reserve` held.")
method("memory.add_holder", AddHolder, HolderReply, role="actor", idempotent=True,
       doc="Register a cache holder, its KV bytes per token and its weight bytes (a lease of `actor`).")
method("memory.open", OpenSession, Empty, role="actor", doc="Open a session owned by `owner`.")
method("memory.has", SessionRef, HasReply, role="actor", idempotent=True)
method("memory.prefill", PrefillRequest, GrantAnswer,
       role="actor", doc="Start a turn: the context becomes keep + add tokens, all but the last resident.")
method("memory.grant_batch", GrantBatch, Answers,
       role="actor", doc="Room for one speculative step per session; answers the γ each can afford.")
method("memory.commit_batch", CommitBatch, Answers,
       role="actor", doc="End a step: accepted drafts and emitted tokens; rejected blocks are freed at once.")
method("memory.finish", SessionRef, Empty, role="actor", doc="End a turn: the session is idle (evictable).")
method("memory.release", SessionRef, Freed, role="actor", doc="Forget a session and free its blocks.")
method("memory.release_holder", SessionRef, Freed,
       role="actor", doc="Reclaim every block of holder `session` (used when its actor died).")
method("memory.observe_costs", Costs, Empty,
       role="actor", doc="A measured step (seconds per draft token, target forward of m tokens): the cost curve γ* is picked from.")
method("memory.usage", Empty, Usage, role="operator", idempotent=True,
       doc="Budget, live and peak bytes, per session and per holder, leases.")

# ---------------------------------------------------------------- draft (the small model)


@message
class ModelInfo:
    bytes_per_token: int
    vocab_size: int
    max_context: int
    sessions: int = 0
    held: int = 0                 # KV bytes its caches hold now
    weight_bytes: int = 0         # its model's weights in the precision it runs
    rss_bytes: int = 0            # the actor process's resident memory
    shared_weights: bool = False  # weights loaded once by the zygote, shared copy-on-write
    precision: Any = None         # {"precision", "requested", "weight_bytes", "cpu", "probe_ms"}


@message
class DraftOpen:
    session: str
    token_ids: np.ndarray              # int64 committed token ids
    blocks: int
    keep: int = 0


@message
class Held:
    held: int


@message
class ProposeRequest:
    sessions: list[str]
    gammas: list[int]
    blocks: list[int]
    temperature: float | list[float] = 0.0   # one for all rows, or one per row
    seeds: list[int] | None = None
    widths: list[int] | None = None          # tree width per row (None: chains)


@message
class Proposal:
    tokens: np.ndarray                 # int64 [B, Nmax], -1 past a row's node count
    parents: np.ndarray | None = None  # int64 [B, Nmax], each node's parent (−1: the root)
    probs: np.ndarray | None = None    # float32 [B, Nmax, V] of sampled nodes
    seconds: float = 0.0
    token_seconds: float | None = None  # mean forward time of the positions that fed one token a row
    forward_seconds: dict[str, float] | None = None   # {M: mean seconds of forwards feeding M a row}


@message
class AcceptRequest:
    session: str
    accepted: int
    tokens: np.ndarray                 # int64: the accepted drafts, then the target's token
    blocks: int
    path: list[int] | None = None      # accepted tree nodes (None: the chain's first `accepted`)


@message
class AcceptBatch:
    requests: list[AcceptRequest]      # one per session of the step


@message
class HeldEach:
    held: list[int]                    # per request, in order


method("draft.info", Empty, ModelInfo, role="client", idempotent=True,
       doc="Bytes per token, vocabulary, context, weights, precision and resident memory.")
method("draft.has", SessionRef, HasReply, role="actor", idempotent=True)
method("draft.open", DraftOpen, Held, role="actor", idempotent=True,
       doc="(Re)build a session's cache from its committed token ids.")
method("draft.extend", DraftOpen, Held, role="actor", doc="A new turn: the first `keep` ids are unchanged.")
method("draft.propose", ProposeRequest, Proposal,
       role="actor", doc="Draft a token tree (a chain at width 1) per session (greedy or top-k, or sampled with q).")
method("draft.accept", AcceptRequest, Held, role="actor", doc="Keep the accepted path (compacted), drop every other branch.")
method("draft.accept_batch", AcceptBatch, HeldEach, role="actor",
       doc="`accept` for every session of a step; NotFound, with nothing changed, unless all are open.")
method("draft.close", SessionRef, Held, role="actor", idempotent=True, doc="Drop a session's cache.")

# ---------------------------------------------------------------- verifier (chat sessions)


@message
class OpenChat:
    session: str = ""                  # "" = the verifier picks an id


@message
class ChatRequest:
    session: str
    message: str
    max_new_tokens: int = 64
    temperature: float = 0.0
    seed: int = 0
    gamma: int | None = None           # fixed draft nodes per step; None = chosen by the memory actor
    tree: int | None = None            # widest token tree (1: a chain); None = the deployment's


@message
class GenerateRequest:
    prompt_ids: np.ndarray             # int64 token ids; no chat template applied
    max_new_tokens: int = 64
    temperature: float = 0.0
    seed: int = 0
    gamma: int | None = None
    tree: int | None = None


@message
class CompleteRequest:
    """A whole conversation, continued in `session`: the KV of the longest prefix it shares with
    the session's committed tokens is reused (the HTTP gateway's stateless requests)."""
    session: str
    messages: list[dict[str, str]]     # {"role": system|user|assistant, "content": str}, last: user
    max_new_tokens: int = 64
    temperature: float = 0.0
    seed: int = 0
    gamma: int | None = None
    tree: int | None = None


@message
class ChatChunk:
    tokens: np.ndarray                 # int64 token ids accepted in this step
    text: str = ""                     # their text (a UTF-8-safe delta)
    done: bool = False
    step: dict[str, Any] | None = None  # this step: gamma, accepted, emitted, draft_s, target_s
    stats: dict[str, Any] = field(default_factory=dict)   # the turn so far (+ prompt_tokens, prefilled_tokens)
    reply: str = ""                    # the whole reply text, on the final chunk


@message
class SessionList:
    sessions: list[str] = field(default_factory=list)
    active: list[str] = field(default_factory=list)
    held: int = 0                      # target cache bytes held


method("verifier.info", Empty, ModelInfo, role="client", idempotent=True,
       doc="The target's bytes per token, vocabulary, context, weights, precision and resident memory.")
method("verifier.open", OpenChat, SessionRef, role="client",
       doc="Open a chat session owned by the caller; an empty `session` gets a random id, a taken one `Conflict`.")
method("verifier.close", SessionRef, Freed, role="client", idempotent=True,
       doc="Close a chat session; its blocks are freed everywhere.")
method("verifier.chat", ChatRequest, role="client", chunk=ChatChunk,
       doc="One chat turn, streamed: a chunk per speculative step, then END.")
method("verifier.complete", CompleteRequest, role="client", chunk=ChatChunk,
       doc="Continue a whole conversation in a session, reusing the KV of its common prefix; streamed like chat.")
method("verifier.generate", GenerateRequest, role="client", chunk=ChatChunk,
       doc="Continue raw token ids in a throwaway session (benchmarks), streamed like chat.")
method("verifier.sessions", Empty, SessionList, role="operator", idempotent=True)

# ---------------------------------------------------------------- http (the OpenAI-compatible gateway)

method("http.sessions", Empty, SessionList, role="operator", idempotent=True,
       doc="The verifier sessions the gateway keeps for prefix reuse, and those serving a request now.")
