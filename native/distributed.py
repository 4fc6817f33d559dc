"""MRS on MPI ranks: row blocks of the RCM band, each through the 3-part kernel, halos from
neighbours only.

Rank r owns rows [lo_r, hi_r) of the band matrix B = L - L^T (L its strict lower triangle, in
the RCM order). Its local matrix covers rows [start_r, hi_r), where start_r is the lowest column
its rows reach: the halo rows [start_r, lo_r) hold no entries. The 3-part kernel then gives, for
the rank's own rows, L x plus the transposed contributions of its own entries, and for the halo
rows only transposed contributions, which belong to the ranks that own those rows. One product:

1. x of the halo starts coming in from the ranks below that own it (a halo may span several);
2. meanwhile the kernel runs on every entry that does not read the halo (OpenMP threads inside
   the rank); the few that do (`Part.edge`, a corner block) are added once it has arrived;
3. y of the halo goes out to the same ranks, which add it to their rows.

After RCM the halo is one bandwidth wide, so a product moves O(bandwidth) doubles per rank.
MRS's one dot product per iteration is an `Allreduce`; its vector update is local.

`Part` is what one rank holds; `parts()` cuts a matrix for every rank at once (the rank that
reads the file does this and sends each rank its part). The exchange is an object with
`x_start(v)`, `x_finish(requests)` and `y(w)`: `MpiExchange` over a communicator, and in tests
`LocalExchange`, which runs every rank's exchanges in one process (the partition logic checked
without MPI).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .errors import InvalidOperand
from .solver import iterate
from .split import row_blocks, split_band
from .spmv import BandSplit, HalfMatrix, band_spmv, dot
from .workspace import Workspace

X_TAG, Y_TAG = 11, 12


@dataclass(frozen=True)
class Link:
    """Rows [lo, hi) (global, in the band order) shared with rank `peer`."""

    peer: int
    lo: int
    hi: int


@dataclass
class Part:
    """One rank's share: its rows, its halo, its local half matrix and split, its links."""

    rank: int
    lo: int
    hi: int
    start: int  # first row of the local block (halo included)
    half: HalfMatrix  # every entry that does not read the halo of x
    split: BandSplit
    below: list[Link]  # ranks owning rows of my halo: x from them, y to them
    above: list[Link]  # ranks whose halo holds my rows: x to them, y from them
    edge: sp.csr_array | None = None  # the entries that read it (column in the halo), a corner block
    work: np.ndarray = field(init=False, repr=False)
    workspace: Workspace = field(init=False, repr=False)  # the solver's vectors, kept between solves

    def __post_init__(self) -> None:
        self.work = np.empty(self.split.work_size)
        self.workspace = Workspace(self.m)

    @property
    def m(self) -> int:
        """Local rows, halo included."""
        return self.hi - self.start

    @property
    def own(self) -> slice:
        return slice(self.lo - self.start, self.hi - self.start)

    def rows(self, link: Link) -> slice:
        return slice(link.lo - self.start, link.hi - self.start)

    @property
    def nnz(self) -> int:
        return self.half.nnz + (self.edge.nnz if self.edge is not None else 0)

    def shares(self) -> tuple[int, int, int]:
        """Stored nonzeros of this rank's block in the inner, middle and outer parts."""
        middle, outer = self.split.middle_count, self.split.outer_count
        return self.nnz - middle - outer, middle, outer  # the edge counts as inner

    def halo_bytes(self) -> int:
        """Bytes this rank receives per product (x in from below, y in from above)."""
        return 8 * (sum(k.hi - k.lo for k in self.below) + sum(k.hi - k.lo for k in self.above))


def cut(lower: sp.csr_array, ranks: int, offsets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Row offsets (ranks+1,) of blocks of about equal traffic (or the `offsets` given), and
    each rank's halo start."""
    if ranks < 1:
        raise InvalidOperand(f"ranks must be >= 1, got {ranks}")
    if offsets is None:
        offsets = row_blocks(np.asarray(lower.indptr, dtype=np.int64), ranks)
    offsets = np.asarray(offsets, dtype=np.int64)
    n = lower.shape[0]
    if offsets.shape != (ranks + 1,) or offsets[0] != 0 or offsets[-1] != n or np.any(np.diff(offsets) < 0):
        raise InvalidOperand(f"offsets must rise from 0 to {n} in {ranks} steps, got {offsets.tolist()}")
    starts = np.empty(ranks, dtype=np.int64)
    for r in range(ranks):
        lo, hi = int(offsets[r]), int(offsets[r + 1])
        cols = lower.indices[lower.indptr[lo] : lower.indptr[hi]]
        starts[r] = min(lo, int(cols.min())) if len(cols) else lo
    return offsets, starts


def links(offsets: np.ndarray, starts: np.ndarray, rank: int) -> tuple[list[Link], list[Link]]:
    """(below, above) for `rank`: the overlaps of its halo with lower ranks' rows, and of its
    rows with higher ranks' halos."""
    ranks = len(starts)
    lo, hi = int(offsets[rank]), int(offsets[rank + 1])
    below = [Link(s, max(int(starts[rank]), int(offsets[s])), min(lo, int(offsets[s + 1]))) for s in range(rank)]
    above = [Link(d, max(lo, int(starts[d])), min(hi, int(offsets[d]))) for d in range(rank + 1, ranks)]
    return [k for k in below if k.hi > k.lo], [k for k in above if k.hi > k.lo]


def make_part(rank: int, offsets: np.ndarray, starts: np.ndarray, rows: sp.csr_array, threads: int) -> Part:
    """Rank `rank`'s part from its own rows of L (`rows`: shape (hi-lo, n), global columns)."""
    lo, hi, start = int(offsets[rank]), int(offsets[rank + 1]), int(starts[rank])
    m, h = hi - start, lo - start
    indptr = np.concatenate((np.zeros(h, dtype=np.int64), np.asarray(rows.indptr, dtype=np.int64)))
    block = sp.csr_array((rows.data, rows.indices - start, indptr), shape=(m, m)).tocoo()
    # Entries whose column lies in the halo read x from other ranks: they wait for it, in a
    # small corner block, while the kernel runs over all the others (overlap).
    at_edge = block.col < h
    rest = sp.csr_array((block.data[~at_edge], (block.row[~at_edge], block.col[~at_edge])), shape=(m, m))
    rest.sort_indices()
    edge = None
    if at_edge.any():
        corner = int(block.row[at_edge].max()) + 1
        edge = sp.csr_array((block.data[at_edge], (block.row[at_edge], block.col[at_edge])), shape=(corner, corner))
    half = HalfMatrix.from_lower(rest, None, -1)
    split = split_band(half, threads)
    below, above = links(offsets, starts, rank)
    return Part(rank, lo, hi, start, half.compacted(offsets=True), split, below, above, edge)


def parts(lower: sp.csr_array, ranks: int, threads: int = 1, offsets: np.ndarray | None = None) -> list[Part]:
    """Every rank's part of the skew band matrix L - L^T (for tests and one-process runs)."""
    offsets, starts = cut(lower, ranks, offsets)
    return [make_part(r, offsets, starts, lower[int(offsets[r]) : int(offsets[r + 1])], threads) for r in range(ranks)]


class MpiExchange:
    """Halo exchanges of one rank over an mpi4py communicator (non-blocking, neighbours only)."""

    def __init__(self, comm, part: Part) -> None:
        self.comm, self.part = comm, part
        self.inbox = [np.empty(k.hi - k.lo) for k in part.above]
        self._sum = np.empty(1)
        self.halo_s = 0.0  # seconds in the halo exchanges (waits included) ...
        self.reduce_s = 0.0  # ... and in Allreduce, for the scale model (docs/spmv.md)

    def x_start(self, v: np.ndarray) -> list:
        """Start filling v's halo with the owners' values and sending my rows to the halos
        above; `x_finish` waits for it."""
        p = self.part
        reqs = [self.comm.Irecv(v[p.rows(k)], source=k.peer, tag=X_TAG) for k in p.below]
        return reqs + [self.comm.Isend(v[p.rows(k)], dest=k.peer, tag=X_TAG) for k in p.above]

    def x_finish(self, reqs: list) -> None:
        from mpi4py import MPI

        t0 = time.perf_counter()
        MPI.Request.Waitall(reqs)
        self.halo_s += time.perf_counter() - t0

    def y(self, w: np.ndarray) -> None:
        """Send my halo rows' contributions to their owners; add what the ranks above computed
        for my rows."""
        from mpi4py import MPI

        p = self.part
        t0 = time.perf_counter()
        reqs = [self.comm.Irecv(buf, source=k.peer, tag=Y_TAG) for k, buf in zip(p.above, self.inbox)]
        reqs += [self.comm.Isend(w[p.rows(k)], dest=k.peer, tag=Y_TAG) for k in p.below]
        MPI.Request.Waitall(reqs)
        self.halo_s += time.perf_counter() - t0
        for k, buf in zip(p.above, self.inbox):
            w[p.rows(k)] += buf

    def sum(self, value: float) -> float:
        from mpi4py import MPI

        t0 = time.perf_counter()
        self._sum[0] = value
        self.comm.Allreduce(MPI.IN_PLACE, self._sum, op=MPI.SUM)
        self.reduce_s += time.perf_counter() - t0
        return float(self._sum[0])


def apply(
    part: Part,
    exchange,
    v: np.ndarray,
    w: np.ndarray,
    alpha: float = 0.0,
    u: np.ndarray | None = None,
    scale: float = 1.0,
) -> np.ndarray:
    """w = alpha u + scale B v on this rank's own rows (local vectors, halo first). v's halo is
    filled in while the kernel runs over the entries that do not read it; u's halo is zeroed
    (its halo rows must carry only B's contributions)."""
    pending = exchange.x_start(v)
    if u is not None:
        u[: part.own.start] = 0.0
    band_spmv(part.half, part.split, v, w, part.work, alpha, u, scale=scale)
    exchange.x_finish(pending)
    add_edge(part, v, w, scale)
    exchange.y(w)
    return w


def add_edge(part: Part, v: np.ndarray, w: np.ndarray, scale: float = 1.0) -> None:
    """w += scale (E - E^T) v for the entries E that read the halo (once it is filled)."""
    if part.edge is not None:
        k = part.edge.shape[0]
        w[:k] += scale * (part.edge @ v[:k] - part.edge.T @ v[:k])


@dataclass(frozen=True)
class RankResult:
    """One rank's share of a solve: its rows of x (band order) and the common figures."""

    x: np.ndarray
    converged: bool
    iterations: int
    residual: float
    seconds: float
    history: tuple[float, ...] = ()  # |g_j| / ||b|| per iteration, as native/solver.py's


def mrs(part: Part, exchange, b_own: np.ndarray, alpha: float, tol: float = 1e-10, maxiter: int = 1000) -> RankResult:
    """MRS (native/solver.py's recurrence) on distributed vectors: `b_own` is this rank's rows
    of the permuted b; every rank calls it at once with the same alpha, tol and maxiter."""
    own = part.own
    threads = part.split.blocks
    start = time.perf_counter()
    beta0 = math.sqrt(exchange.sum(dot(b_own, b_own, threads)))
    with part.workspace.zeroed() as (x, *vectors):
        converged, history = iterate(
            b_own,
            beta0,
            alpha,
            tol,
            maxiter,
            x,
            product=lambda v, w, scale, a, v_prev: apply(part, exchange, v, w, a, v_prev, scale),
            norm=lambda w: math.sqrt(exchange.sum(dot(w[own], w[own], threads))),
            threads=threads,
            own=own,
            vectors=vectors,
        )
        seconds = time.perf_counter() - start
        v, u, r = vectors[:3]  # x twice (apply fills the one's halo and zeroes the other's), and r
        np.copyto(v, x)
        np.copyto(u, x)
        apply(part, exchange, v, r, alpha, u)
        rr = r[own] - b_own
        residual = math.sqrt(exchange.sum(float(np.dot(rr, rr)))) / beta0 if beta0 > 0 else 0.0
        x_own = x[own].copy()
    return RankResult(x_own, converged, len(history), residual, seconds, tuple(history))


class LocalExchange:
    """Every rank's exchanges in one process, for tests: `x` and `y` act on all ranks' vectors
    at once (given as a list, one per rank)."""

    def __init__(self, all_parts: list[Part]) -> None:
        self.parts = all_parts

    def x_finish(self, vs: list[np.ndarray]) -> None:
        """Every rank's halo of x, filled from its owners (MpiExchange's x_start and x_finish)."""
        for p, v in zip(self.parts, vs):
            for k in p.below:
                q = self.parts[k.peer]
                v[p.rows(k)] = vs[k.peer][q.rows(k)]

    def y(self, ws: list[np.ndarray]) -> None:
        sent = [[(k, w[p.rows(k)].copy()) for k in p.below] for p, w in zip(self.parts, ws)]
        for p, outbox in zip(self.parts, sent):
            for k, values in outbox:
                q = self.parts[k.peer]
                ws[k.peer][q.rows(Link(p.rank, k.lo, k.hi))] += values


def local_product(all_parts: list[Part], x: np.ndarray) -> np.ndarray:
    """B x through every rank's block and the halo exchanges, in one process (tests)."""
    ex = LocalExchange(all_parts)
    vs = []
    for p in all_parts:
        v = np.full(p.m, np.nan)  # the halo is not there yet: the kernel must not read it
        v[p.own] = x[p.lo : p.hi]
        vs.append(v)
    ws = [band_spmv(p.half, p.split, v, np.empty(p.m), p.work) for p, v in zip(all_parts, vs)]
    ex.x_finish(vs)
    for p, v, w in zip(all_parts, vs, ws):
        add_edge(p, v, w)
    ex.y(ws)
    return np.concatenate([w[p.own] for p, w in zip(all_parts, ws)]) if all_parts else np.zeros(0)
