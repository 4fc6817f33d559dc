"""The solver actor's methods: skew-symmetric SpMV (PARS3 split) and MRS solves."""

from __future__ import annotations

from dataclasses import field

import numpy as np

from .kernel_messages import Empty
from .method_table import method
from .schema import message


@message
class RegisterMatrix:
    """A matrix as Matrix Market bytes (``mtx``) or as CSR arrays (``indptr``, ``indices``, ``data``)."""

    id: str = ""  # "" = the actor picks one
    kind: str = "skew"  # skew | symmetric
    mtx: bytes | None = None
    n: int = 0  # rows (= columns) for CSR input
    indptr: np.ndarray | None = None  # int32 or int64 [n + 1]
    indices: np.ndarray | None = None  # int32 or int64 [nnz], column of each value
    data: np.ndarray | None = None  # float64 [nnz]
    threads: int = 0  # 0 = the actor's default
    tol: float = 1e-12  # skew/symmetry check tolerance (relative to max |a_ij|)
    shared: bool = False  # visible to every client (default: to its registering client only)
    precision: str = "float64"  # float32: values stored rounded (fewer bytes a product; see docs/spmv.md)


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
    index_bytes: int = 4  # per stored entry: 2 with 16-bit offsets from the row
    value_bytes: int = 8  # per stored entry: 1 coded (<= 256 distinct values), 4 with float32


@message
class MatrixId:
    id: str


@message
class MatvecRequest:
    id: str
    x: np.ndarray  # float64 [n]


@message
class MatvecReply:
    y: np.ndarray  # float64 [n]


@message
class SolveRequest:
    id: str
    b: np.ndarray  # float64 [n]
    alpha: float = 1.0
    tol: float = 1e-10
    maxiter: int = 0  # 0 = 10 n
    history: bool = False  # return the residual history too


@message
class SolveReply:
    x: np.ndarray  # float64 [n]
    converged: bool
    iterations: int
    residual: float  # true ||b - (αI + S)x|| / ||b||
    seconds: float
    history: np.ndarray | None = None  # float64 [iterations], relative residual after each


@message
class Dropped:
    dropped: bool


@message
class MatrixList:
    matrices: list[MatrixReport] = field(default_factory=list)


method(
    "solver.register",
    RegisterMatrix,
    MatrixReport,
    role="client",
    doc="Check, reorder (RCM) and split a matrix once; later calls reuse the plan.",
)
method("solver.describe", MatrixId, MatrixReport, role="client", idempotent=True, doc="The plan's report.")
method("solver.matvec", MatvecRequest, MatvecReply, role="client", idempotent=True, doc="y = S x.")
method(
    "solver.solve",
    SolveRequest,
    SolveReply,
    role="client",
    idempotent=True,
    doc="Solve (αI + S) x = b by MRS (one SpMV per iteration).",
)
method("solver.drop", MatrixId, Dropped, role="client", idempotent=True, doc="Forget a matrix.")
method("solver.list", Empty, MatrixList, role="client", idempotent=True, doc="Every registered matrix.")
