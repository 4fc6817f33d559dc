"""A plan: a checked matrix, reordered by reverse Cuthill-McKee into a band, stored as its
lower triangle and split into three parts for T threads. Built once, reused for every product.

The plan works in the permuted space B = A[perm][:, perm]; `matvec` and `shifted` permute x in
and y out, the solver permutes only b in and x out.
"""

import time
from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import reverse_cuthill_mckee

from .errors import InvalidOperand
from .split import split_band
from .spmv import BandSplit, HalfMatrix, band_spmv, max_threads, permuted
from .validate import as_vector, check_matrix, check_scalar, check_threads
from .workspace import Workspace

MIN_NNZ_PER_THREAD = 20_000  # below this a second thread costs more in wake-up than it saves


@dataclass(frozen=True)
class PlanReport:
    """What a plan did to its matrix; as_dict() gives plain ints, floats and strs for the wire."""

    kind: str  # "skew" or "symmetric"
    n: int
    nnz: int  # nonzeros of the full matrix
    nnz_stored: int  # nonzeros of the strict lower triangle
    bandwidth_before: int  # max |i - j| over nonzeros, as given
    bandwidth_after: int  # the same after reordering
    threads: int  # row blocks, one per thread
    share_inner: float  # fraction of stored nonzeros in each part
    share_middle: float
    share_outer: float
    window_rows: int  # window buffer length summed over blocks (doubles)
    build_seconds: float
    index_bytes: int = 4  # per stored entry: 2 with 16-bit row offsets, 4 with 32-bit columns
    value_bytes: int = 8  # per stored entry: 1 coded (<= 256 distinct values), 4 for float32

    def as_dict(self) -> dict:
        return asdict(self)


def footprint(n: int, nnz: int) -> int:
    """At most the bytes a plan of an n-row matrix with nnz nonzeros holds, with the vectors of
    one solve: nnz/2 stored entries at 12 bytes (a compact plan keeps 10, 6 or 3) and n+1 8-byte
    row offsets, the permutation, a window buffer of at most n, and MRS's eight vectors of n
    doubles (the split's head and outer lists are not counted: a few per cent of a band)."""
    return 12 * (nnz // 2 + 1) + 8 * (n + 1) + 8 * n + 8 * n + 8 * 8 * n


def bandwidth(a) -> int:
    """max |i - j| over the stored nonzeros of a sparse matrix (0 if there are none)."""
    coo = sp.coo_array(a)
    if coo.nnz == 0:
        return 0
    return int(np.abs(coo.row.astype(np.int64) - coo.col.astype(np.int64)).max())


def reordered_lower(a: sp.csr_array, reorder: bool = True) -> tuple[np.ndarray, sp.csr_array]:
    """(perm, L): the reverse Cuthill-McKee order of a checked matrix (identity without
    `reorder`) and the strict lower triangle of A[perm][:, perm] in CSR, columns sorted."""
    n = a.shape[0]
    perm = reverse_cuthill_mckee(a, symmetric_mode=True) if reorder else np.arange(n)
    perm = np.ascontiguousarray(perm, dtype=np.int64)
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(n)
    coo = a.tocoo()
    rows, cols = inverse[coo.row], inverse[coo.col]
    lower = rows > cols
    tril = sp.csr_array((coo.data[lower], (rows[lower], cols[lower])), shape=(n, n))
    tril.sum_duplicates()
    tril.sort_indices()
    return perm, tril


class Plan:
    """A skew-symmetric (or symmetric) matrix prepared for the banded 3-part kernel.

    Attributes: kind, n, perm (row k of the band matrix is row perm[k] of the input),
    half (the permuted HalfMatrix), split (its BandSplit), threads, workspace (the solver's
    vectors, kept between solves).
    """

    def __init__(self, kind: str, perm: np.ndarray, half: HalfMatrix, split: BandSplit, report: PlanReport):
        self.kind = kind
        self.n = half.n
        self.perm = perm
        self.half = half
        self.split = split
        self.threads = split.blocks
        self.workspace = Workspace(self.n)
        self._report = report

    @classmethod
    def build(
        cls,
        matrix,
        kind: str = "skew",
        threads: int | None = None,
        tol: float = 1e-12,
        reorder: bool = True,
        precision: str = "float64",
        compact: bool = True,
    ) -> "Plan":
        """Check `matrix` (any scipy sparse matrix or 2-D array), reorder it by RCM (unless
        reorder is False) and split it for `threads` threads (default: OpenMP's count, fewer for
        a small matrix). With `compact` (the default) entries are stored as 16-bit offsets from
        their row when the band allows, and values as 1-byte codes into a table when the matrix
        has at most 256 distinct ones (lossless); `precision` "float32" stores the values rounded
        to float32 (the plan is then of the rounded matrix; products and sums stay in double).

        Raises InvalidMatrix, NotSkewSymmetric / NotSymmetric or InvalidOperand."""
        if precision not in ("float64", "float32"):
            raise InvalidOperand(f"precision must be 'float64' or 'float32', got {precision!r}")
        start = time.perf_counter()
        a = check_matrix(matrix, kind, tol)
        if threads is None:  # a thread per MIN_NNZ_PER_THREAD stored nonzeros, at most OpenMP's count
            threads = max(1, min(max_threads(), (a.nnz // 2) // MIN_NNZ_PER_THREAD))
        threads = check_threads(threads)
        n = a.shape[0]
        perm, tril = reordered_lower(a, reorder)
        if precision == "float32":  # the split's far values must be the rounded ones too
            tril.data = tril.data.astype(np.float32).astype(np.float64)
        sign = -1 if kind == "skew" else 1
        diag = a.diagonal()[perm] if kind == "symmetric" else None
        half = HalfMatrix.from_lower(tril, diag, sign)
        split = split_band(half, threads)
        bandwidth_after = int((half.row_of_entries() - half.col).max(initial=0))
        if compact or precision == "float32":
            half = half.compacted(offsets=compact, float32=precision == "float32", coded=compact)
        stored = max(half.nnz, 1)
        report = PlanReport(
            kind=kind,
            n=n,
            nnz=int(a.nnz),
            nnz_stored=half.nnz,
            bandwidth_before=bandwidth(a),
            bandwidth_after=bandwidth_after,
            threads=threads,
            share_inner=(half.nnz - split.middle_count - split.outer_count) / stored,
            share_middle=split.middle_count / stored,
            share_outer=split.outer_count / stored,
            window_rows=split.work_size,
            build_seconds=0.0,
            index_bytes=2 if half.off is not None else 4,
            value_bytes=1 if half.vcode is not None else 4 if half.val32 is not None else 8,
        )
        plan = cls(kind, perm, half, split, report)
        plan._report = PlanReport(**{**asdict(report), "build_seconds": time.perf_counter() - start})
        return plan

    def for_threads(self, threads: int) -> "Plan":
        """The same reordered matrix split for another thread count (no new RCM)."""
        threads = check_threads(threads)
        split = split_band(self.half, threads)
        stored = max(self.half.nnz, 1)
        report = PlanReport(
            **{
                **asdict(self._report),
                "threads": threads,
                "share_inner": (self.half.nnz - split.middle_count - split.outer_count) / stored,
                "share_middle": split.middle_count / stored,
                "share_outer": split.outer_count / stored,
                "window_rows": split.work_size,
            }
        )
        return Plan(self.kind, self.perm, self.half, split, report)

    def describe(self) -> PlanReport:
        return self._report

    def work(self) -> np.ndarray:
        """A window buffer for apply(); one per concurrent caller."""
        return np.empty(self.split.work_size)

    def apply(
        self,
        x: np.ndarray,
        y: np.ndarray,
        alpha: float = 0.0,
        u: np.ndarray | None = None,
        work: np.ndarray | None = None,
        threads: int | None = None,
        scale: float = 1.0,
    ) -> np.ndarray:
        """y = alpha u + scale B x in the permuted space (B the band matrix), with float64
        buffers given as is; u None means no shift term. threads defaults to the plan's block
        count (fewer threads share the blocks out). Returns y."""
        work = self.work() if work is None else work
        return band_spmv(self.half, self.split, x, y, work, alpha, u, threads, scale)

    def matvec(self, x) -> np.ndarray:
        """A x in the input's ordering; x any real vector of length n without NaN or inf."""
        return self.shifted(0.0, x)

    def shifted(self, alpha: float, x) -> np.ndarray:
        """(alpha I + A) x in the input's ordering: the fused product."""
        alpha = check_scalar(alpha, "alpha")
        xp = self.permute(x)
        yp = self.apply(xp, np.empty(self.n), alpha, xp if alpha != 0.0 else None)
        return self.unpermute(yp)

    def permute(self, x) -> np.ndarray:
        """x in the permuted space (a parallel gather: after RCM every access misses the cache)."""
        return permuted(self.perm, as_vector(x, self.n, "x"), self.threads)

    def unpermute(self, xp: np.ndarray) -> np.ndarray:
        """x back in the input's ordering (a parallel scatter)."""
        if xp.shape != (self.n,):
            raise InvalidOperand(f"expected shape ({self.n},), got {xp.shape}")
        return permuted(self.perm, xp, self.threads, inverse=True)
