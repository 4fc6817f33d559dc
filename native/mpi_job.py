"""A resident MPI job driven from another process: the solver actor's way to run on ranks.

`RankJob` starts `mpiexec -n N python -m specmemo.native.mpi_solve --serve ENDPOINT`, whose rank
0 connects a PAIR socket back; commands go one at a time (a lock: the ranks run one collective
operation at a time). A rank that dies ends the whole job (mpiexec aborts the others): the call
in progress raises `RankFailure`, and the next call starts a new job. `JobPlan` is a matrix
registered in the job: it keeps its CSR arrays, so that after a new job started it registers
again by itself (the caller's next solve works without registering anew).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import zmq

from .errors import InvalidMatrix, InvalidOperand
from .job_wire import recv_obj, send_obj
from .mpi_solve import command
from .plan import PlanReport
from .solver import SolveResult

#: Most seconds for a job to start (mpiexec, the ranks' imports, rank 0's hello).
START_S = 120.0


class RankFailure(RuntimeError):
    """The MPI job ended (a rank died, or mpiexec itself) while a command was in progress."""


class RankJob:
    def __init__(self, ranks: int, threads: int = 1) -> None:
        if ranks < 1 or threads < 1:
            raise ValueError(f"ranks and threads must be >= 1, got {ranks} and {threads}")
        self.ranks, self.threads = ranks, threads
        self.generation = 0  # counts jobs started; plans of an older one are gone
        self.proc: subprocess.Popen | None = None
        self.sock: zmq.Socket | None = None
        self.lock = threading.Lock()
        self.dir = tempfile.mkdtemp(prefix="specmemo-mpi-")  # 0700
        self.log = os.path.join(self.dir, "job.log")

    def _start(self) -> None:
        endpoint = f"ipc://{self.dir}/job.sock"
        self.sock = zmq.Context.instance().socket(zmq.PAIR)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        argv, env = command(self.ranks, self.threads, "--serve", endpoint, "--parent", str(os.getpid()))
        # A session of its own: the whole job (mpiexec, its proxies, the ranks) is one group to
        # kill. Its output goes to a file (a pipe nobody reads would fill and stop the ranks);
        # its tail explains a failure.
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.generation += 1
        self._wait(START_S)

    def _wait(self, timeout: float | None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        sock, proc = self.sock, self.proc
        assert sock is not None and proc is not None, "the job is started"
        while not sock.poll(100):
            code = proc.poll()
            if code is not None:
                with open(self.log, "rb") as log:
                    err = log.read()[-1500:].decode(errors="replace")
                self._end()
                raise RankFailure(f"the MPI job of {self.ranks} ranks ended (exit {code}) {err.strip()}".strip())
            if deadline is not None and time.monotonic() > deadline:
                self._end()
                raise RankFailure(f"the MPI job of {self.ranks} ranks did not answer in {timeout:.0f} s")
        return recv_obj(sock)

    def call(self, op: str, **fields) -> dict:
        """Send one command and wait for its reply; RankFailure if the job ends meanwhile."""
        with self.lock:
            if self.proc is None:
                self._start()
            assert self.sock is not None
            send_obj(self.sock, {"op": op, **fields})
            reply = self._wait(None)
        if "error" in reply:
            name, text = reply["error"]
            if name in ("NotSkewSymmetric", "InvalidMatrix"):
                raise InvalidMatrix(text)
            raise InvalidOperand(f"{name}: {text}")
        return reply["ok"]

    def _end(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            self.proc = None

    def close(self) -> None:
        """Stop the job (asked first, then killed) and remove its directory."""
        with self.lock:
            if self.proc is not None and self.proc.poll() is None and self.sock is not None:
                try:
                    send_obj(self.sock, {"op": "stop"})
                    if self.sock.poll(5000):
                        recv_obj(self.sock)
                    self.proc.wait(5)
                except (zmq.ZMQError, subprocess.TimeoutExpired):
                    pass
            self._end()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class JobPlan:
    """A skew matrix registered in a RankJob, with the methods of a Plan that the solver uses."""

    job: RankJob
    key: str
    matrix: sp.csr_array
    report: PlanReport | None = None
    generation: int = -1

    @classmethod
    def build(cls, job: RankJob, key: str, matrix, kind: str = "skew") -> JobPlan:
        if kind != "skew":
            raise InvalidOperand("the solver on MPI ranks takes skew-symmetric matrices only")
        plan = cls(job, key, sp.csr_array(matrix))
        plan._ensure()
        return plan

    def _ensure(self) -> None:
        if self.generation == self.job.generation and self.job.proc is not None:
            return
        start = time.perf_counter()
        a = self.matrix
        out = self.job.call("register", key=self.key, indptr=a.indptr, indices=a.indices, data=a.data, n=a.shape[0])
        self.generation = self.job.generation
        self.report = PlanReport(
            kind="skew",
            n=out["n"],
            nnz=out["nnz"],
            nnz_stored=out["nnz_stored"],
            bandwidth_before=out["bandwidth_before"],
            bandwidth_after=out["bandwidth_after"],
            threads=self.job.ranks * self.job.threads,
            share_inner=out["share_inner"],
            share_middle=out["share_middle"],
            share_outer=out["share_outer"],
            window_rows=out["window_rows"],
            build_seconds=time.perf_counter() - start,
        )

    @property
    def n(self) -> int:
        return self.matrix.shape[0]

    def describe(self) -> PlanReport:
        if self.report is None:
            self._ensure()
        assert self.report is not None
        return self.report

    def matvec(self, x) -> np.ndarray:
        self._ensure()
        return self.job.call("matvec", key=self.key, x=np.asarray(x, dtype=np.float64))["y"]

    def solve(self, b, alpha: float, tol: float, maxiter: int | None) -> SolveResult:
        self._ensure()
        out = self.job.call(
            "solve",
            key=self.key,
            b=np.asarray(b, dtype=np.float64),
            alpha=float(alpha),
            tol=float(tol),
            maxiter=int(maxiter or 0),
        )
        return SolveResult(
            out["x"],
            out["converged"],
            out["iterations"],
            out["residual"],
            tuple(out["history"]),
            out["seconds"],
            alpha,
            tol,
        )

    def drop(self) -> None:
        if self.generation == self.job.generation and self.job.proc is not None:
            self.job.call("drop", key=self.key)
