"""The solver actor: registers skew-symmetric matrices once, serves SpMV and MRS solves.

Its core is :class:`MatrixStore` (plain, synchronous, testable alone): it owns the plans,
enforces the size limits, and maps ids to plans. A matrix belongs to the client that registered
it (its routing identity) unless registered as shared: ids live in one namespace per client plus
the shared one, and another client's matrix is NotFound, as an id that does not exist. The actor
shell validates the wire messages and runs the core in a worker thread so heartbeats keep flowing during a long solve.
"""

from __future__ import annotations

import io
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp
import trio

from specmemo.native import InvalidMatrix, InvalidOperand, NativeError, Plan, mrs
from specmemo.native.matrices import read_mtx
from specmemo.native.mpi_job import JobPlan, RankFailure, RankJob
from specmemo.native.plan import footprint
from specmemo.protocol.errors import (
    ActorDied,
    DeadlineExceeded,
    Internal,
    InvalidInput,
    NotFound,
    OverBudget,
    UnknownActor,
)
from specmemo.protocol.methods import (
    Dropped,
    Empty,
    MatrixId,
    MatrixList,
    MatrixReport,
    MatvecReply,
    MatvecRequest,
    RegisterMatrix,
    SolveReply,
    SolveRequest,
)

from .base import Actor, Call

log = logging.getLogger("specmemo.solver")


SHARED = b""  # the owner of shared matrices (and of every matrix of an in-process store)


class MemoryBudget:
    """The memory actor's budget as the store sees it: blocking calls made from the worker
    thread into the actor's trio loop (`call(method, **params)`)."""

    def __init__(self, call: Callable[..., Any], owner: str) -> None:
        self.call, self.owner = call, owner

    def reserve(self, key: str, nbytes: int) -> None:
        self.call("reserve", owner=self.owner, key=key, nbytes=nbytes)

    def unreserve(self, key: str) -> None:
        try:
            self.call("unreserve", owner=self.owner, key=key)
        except (ActorDied, UnknownActor):
            pass  # a memory actor that restarts starts empty: nothing is held there


class MatrixStore:
    """Plans by (owner, id), within limits on matrices and stored nonzeros. `owner` is the
    caller's identity; a lookup sees the caller's own matrices, then the shared ones.

    A private matrix outlives its client's connection, and nobody else can drop it (a client
    that reconnects is a new identity). So when a registration finds the store full, private
    matrices unused for `reclaim_idle_s` make room, least recently used first; their owners
    would get NotFound and register again. Shared matrices are never reclaimed.
    """

    def __init__(
        self,
        threads: int = 2,
        max_nnz: int = 200_000_000,
        max_matrices: int = 64,
        reclaim_idle_s: float = 600.0,
        job: RankJob | None = None,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.threads = threads
        self.job = job  # plans live in this MPI job's ranks when given
        self.budget = budget  # plans take their bytes from the memory actor's budget
        self.reservations: dict[tuple[bytes, str], tuple[str, int]] = {}  # plan -> (key, bytes)
        self.max_nnz = max_nnz
        self.max_matrices = max_matrices
        self.reclaim_idle_s = reclaim_idle_s
        self.plans: dict[tuple[bytes, str], Plan | JobPlan] = {}
        self.used: dict[tuple[bytes, str], float] = {}  # last registration or use, monotonic
        self.reclaimed = 0
        self._ids = itertools.count(1)

    def stored_nnz(self) -> int:
        return sum(p.describe().nnz for p in self.plans.values())

    def register(self, req: RegisterMatrix, owner: bytes = SHARED) -> MatrixReport:
        if req.kind not in ("skew", "symmetric"):
            raise InvalidInput(f"kind must be 'skew' or 'symmetric', got {req.kind!r}")
        matrix = self._matrix(req)
        # A taken id first: a caller re-registering after a lost reply must learn that its
        # matrix is there, even when the store is full (it then holds that very matrix).
        owner = SHARED if req.shared else owner
        if req.id and (owner, req.id) in self.plans:
            raise InvalidInput(f"a matrix with id {req.id!r} is already registered; drop it first")
        self._make_room(matrix.nnz)
        mid = req.id or f"m{next(self._ids)}"
        if (owner, mid) in self.plans:
            raise InvalidInput(f"a matrix with id {mid!r} is already registered; drop it first")
        key = f"p{next(self._ids)}"
        nbytes = footprint(matrix.shape[0], matrix.nnz)
        if self.job is not None:
            nbytes += 12 * matrix.nnz + 8 * (matrix.shape[0] + 1)  # the CSR kept to register again
        if self.budget is not None:
            self.budget.reserve(key, nbytes)  # OverBudget here: nothing is built
        plan: Plan | JobPlan
        try:
            if self.job is not None:
                plan = JobPlan.build(self.job, key, matrix, req.kind)
            else:
                plan = Plan.build(matrix, req.kind, req.threads or self.threads, tol=req.tol, precision=req.precision)
        except BaseException:
            if self.budget is not None:
                self.budget.unreserve(key)
            raise
        self.reservations[(owner, mid)] = (key, nbytes)
        self.plans[(owner, mid)] = plan
        self.used[(owner, mid)] = time.monotonic()
        return self.report(mid, owner)

    def _fits(self, nnz: int) -> bool:
        return len(self.plans) < self.max_matrices and self.stored_nnz() + nnz <= self.max_nnz

    def _make_room(self, nnz: int) -> None:
        """Reclaim idle private matrices until one of `nnz` nonzeros fits, else OverBudget
        (reclaiming nothing)."""
        if self._fits(nnz):
            return
        cutoff = time.monotonic() - self.reclaim_idle_s
        idle = sorted((t, key) for key, t in list(self.used.items()) if key[0] != SHARED and t <= cutoff)
        count, stored = len(self.plans), self.stored_nnz()
        freed_count = freed_nnz = 0
        for _, key in idle:
            if count - freed_count < self.max_matrices and stored - freed_nnz + nnz <= self.max_nnz:
                break
            freed_count += 1
            freed_nnz += self.plans[key].describe().nnz
        if count - freed_count >= self.max_matrices or stored - freed_nnz + nnz > self.max_nnz:
            raise OverBudget(
                f"{count} matrices of {stored} nonzeros are registered (limits "
                f"{self.max_matrices} and {self.max_nnz}); registering {nnz} more "
                f"nonzeros does not fit, and no private matrix has been idle for "
                f"{self.reclaim_idle_s:g} s to make room; drop one first"
            )
        for _, key in idle[:freed_count]:
            self._forget(key)
            self.reclaimed += 1

    def _forget(self, key: tuple[bytes, str]) -> bool:
        self.used.pop(key, None)
        plan = self.plans.pop(key, None)
        reserved = self.reservations.pop(key, None)
        if reserved is not None and self.budget is not None:
            self.budget.unreserve(reserved[0])
        if isinstance(plan, JobPlan):
            try:
                plan.drop()
            except RankFailure:
                pass  # the job ended: its copy of the plan is gone with it
        return plan is not None

    def _matrix(self, req: RegisterMatrix) -> sp.csr_array:
        if req.mtx is not None:
            try:
                return read_mtx(io.BytesIO(req.mtx))
            except Exception as exc:  # scipy raises several types for a malformed file
                raise InvalidInput(f"mtx is not a readable Matrix Market file: {exc}") from None
        if req.indptr is None or req.indices is None or req.data is None:
            raise InvalidInput("give either mtx bytes or the CSR arrays indptr, indices and data")
        n = req.n
        if n <= 0 or req.indptr.ndim != 1 or len(req.indptr) != n + 1:
            raise InvalidInput(f"indptr must have n + 1 = {n + 1} entries, got shape {req.indptr.shape}")
        if req.indices.shape != req.data.shape or req.indices.ndim != 1:
            raise InvalidInput("indices and data must be 1-D arrays of the same length")
        if req.indptr.dtype.kind not in "iu" or req.indices.dtype.kind not in "iu":
            raise InvalidInput("indptr and indices must be integer arrays")
        indptr = req.indptr.astype(np.int64)
        if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != len(req.indices):
            raise InvalidInput("indptr must start at 0, never decrease, and end at len(indices)")
        if len(req.indices) and (req.indices.min() < 0 or req.indices.max() >= n):
            raise InvalidInput(f"column indices must lie in [0, {n})")
        return sp.csr_array((req.data, req.indices, indptr), shape=(n, n))

    def visible(self, owner: bytes = SHARED) -> list[str]:
        """The ids `owner` sees: its own, then the shared ones."""
        keys = list(self.plans)  # a register in the worker thread may add one meanwhile
        own = sorted(m for o, m in keys if o == owner)
        return own + sorted(m for o, m in keys if o == SHARED and m not in own)

    def plan(self, mid: str, owner: bytes = SHARED) -> Plan | JobPlan:
        key = (owner, mid) if (owner, mid) in self.plans else (SHARED, mid)
        plan = self.plans.get(key)
        if plan is not None:
            self.used[key] = time.monotonic()
        if plan is None:
            raise NotFound(
                f"no matrix with id {mid!r} (yours and shared: {self.visible(owner) or 'none'})", detail={"id": mid}
            )
        return plan

    def report(self, mid: str, owner: bytes = SHARED) -> MatrixReport:
        return MatrixReport(id=mid, **self.plan(mid, owner).describe().as_dict())

    def matvec(self, mid: str, x: np.ndarray, owner: bytes = SHARED) -> np.ndarray:
        return self.plan(mid, owner).matvec(x)

    def solve(self, req: SolveRequest, owner: bytes = SHARED) -> SolveReply:
        plan = self.plan(req.id, owner)
        if isinstance(plan, JobPlan):
            result = plan.solve(req.b, req.alpha, req.tol, req.maxiter or None)
        else:
            result = mrs(plan, req.b, req.alpha, req.tol, req.maxiter or None)
        return SolveReply(
            x=result.x,
            converged=result.converged,
            iterations=result.iterations,
            residual=result.residual,
            seconds=result.seconds,
            history=np.asarray(result.history) if req.history else None,
        )

    def drop(self, mid: str, owner: bytes = SHARED) -> bool:
        """Drop the caller's matrix `mid`, else a shared one of that id."""
        return self._forget((owner, mid) if (owner, mid) in self.plans else (SHARED, mid))


class SolverActor(Actor):
    kind = "solver"
    # a rank of the MPI job died: the call failed, the job restarts and plans register again
    errors = {InvalidMatrix: InvalidInput, InvalidOperand: InvalidInput, NativeError: Internal, RankFailure: ActorDied}

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name, config)
        ranks, threads = int(config.get("ranks", 0)), int(config.get("threads", 2))
        self.memory_name = str(config.get("memory", ""))  # "": the solver's own limits only
        if self.memory_name:
            self.peers.kinds[self.memory_name] = "memory"
        self.store = MatrixStore(
            threads=threads,
            max_nnz=int(config.get("max_nnz", 200_000_000)),
            max_matrices=int(config.get("max_matrices", 64)),
            reclaim_idle_s=float(config.get("reclaim_idle_s", 600)),
            job=RankJob(ranks, threads) if ranks else None,
            budget=MemoryBudget(self._memory_call, name) if self.memory_name else None,
        )

    def _memory_call(self, method: str, **params: Any) -> Any:
        """From the worker thread: one call to the memory actor."""
        return self.call_from_thread(self.memory_name, method, timeout=30, **params)

    async def on_start(self) -> None:
        self.trio_token = trio.lowlevel.current_trio_token()

    async def on_peer_died(self, name: str) -> None:
        if name == self.memory_name and self.store.reservations:
            await self._reserve_again()  # (the runtime runs this in a task of its own)

    async def _reserve_again(self) -> None:
        """A restarted memory actor starts empty: hold every registered plan's bytes again."""
        while True:
            try:
                for key, nbytes in list(self.store.reservations.values()):
                    await self.peers.call(
                        self.memory_name, "reserve", owner=self.name, key=key, nbytes=nbytes, timeout=30
                    )
                return
            except (ActorDied, UnknownActor, DeadlineExceeded):
                await trio.sleep(0.5)
            except OverBudget as exc:
                log.warning("the restarted memory actor cannot hold the solver's plans again: %s", exc)
                return

    async def on_stop(self) -> None:
        if self.store.job is not None:
            await self.run_sync(self.store.job.close)

    async def rpc_register(self, req: RegisterMatrix, call: Call) -> MatrixReport:
        return await self.run_sync(self.store.register, req, call.route)

    def rpc_describe(self, req: MatrixId, call: Call) -> MatrixReport:
        return self.store.report(req.id, call.route)

    async def rpc_matvec(self, req: MatvecRequest, call: Call) -> MatvecReply:
        return MatvecReply(y=await self.run_sync(self.store.matvec, req.id, req.x, call.route))

    async def rpc_solve(self, req: SolveRequest, call: Call) -> SolveReply:
        out = await self.run_sync(self.store.solve, req, call.route)
        nnz = self.store.plan(req.id, call.route).describe().nnz
        self.metrics.set("solve_iterations", out.iterations, "Iterations of the last solve")
        if out.seconds > 0:
            self.metrics.set(
                "solve_gflops",
                2 * nnz * out.iterations / out.seconds / 1e9,
                "Useful GFLOP/s of the last solve's SpMVs (2 nnz per iteration)",
            )
        self.metrics.set("matrices", len(self.store.plans), "Registered matrices")
        return out

    async def rpc_drop(self, req: MatrixId, call: Call) -> Dropped:
        # in the worker thread: giving back a reservation or a rank job's plan is a blocking call
        return Dropped(dropped=await self.run_sync(self.store.drop, req.id, call.route))

    def rpc_list(self, req: Empty, call: Call) -> MatrixList:
        # the caller's and the shared ones (a register in the worker thread may add one meanwhile)
        return MatrixList(matrices=[self.store.report(m, call.route) for m in self.store.visible(call.route)])
