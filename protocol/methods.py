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


# ---------------------------------------------------------------- solver (PARS3 SpMV, MRS)


@message
class RegisterMatrix:
    """A matrix as Matrix Market bytes (``mtx``) or as CSR arrays (``indptr``, ``indices``, ``data``)."""
    id: str = ""                       # "" = the actor picks one
    kind: str = "skew"                 # skew | symmetric
    mtx: bytes | None = None
    n: int = 0                         # rows (= columns) for CSR input
    indptr: np.ndarray | None = None
    indices: np.ndarray | None = None
    data: np.ndarray | None = None
    threads: int = 0                   # 0 = the actor's default
    tol: float = 1e-12                 # skew/symmetry check tolerance (relative to max |a_ij|)


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


@message
class MatrixId:
    id: str


@message
class MatvecRequest:
    id: str
    x: np.ndarray


@message
class MatvecReply:
    y: np.ndarray


@message
class SolveRequest:
    id: str
    b: np.ndarray
    alpha: float = 1.0
    tol: float = 1e-10
    maxiter: int = 0                   # 0 = 10 n
    history: bool = False              # return the residual history too


@message
class SolveReply:
    x: np.ndarray
    converged: bool
    iterations: int
    residual: float                    # true ||b - (αI + S)x|| / ||b||
    seconds: float
    history: np.ndarray | None = None


@message
class Dropped:
    dropped: bool


@message
class MatrixList:
    matrices: list[MatrixReport] = field(default_factory=list)


method("solver.register", RegisterMatrix, MatrixReport,
       doc="Check, reorder (RCM) and split a matrix once; later calls reuse the plan.")
method("solver.describe", MatrixId, MatrixReport, idempotent=True, doc="The plan's report.")
method("solver.matvec", MatvecRequest, MatvecReply, idempotent=True, doc="y = S x.")
method("solver.solve", SolveRequest, SolveReply, idempotent=True,
       doc="Solve (αI + S) x = b by MRS (one SpMV per iteration).")
method("solver.drop", MatrixId, Dropped, idempotent=True, doc="Forget a matrix.")
method("solver.list", Empty, MatrixList, idempotent=True, doc="Every registered matrix.")
