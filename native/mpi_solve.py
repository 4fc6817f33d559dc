"""The program every MPI rank runs for a distributed solve:

    mpiexec -n N python -m specmemo.native.mpi_solve FILE [--alpha A] [--tol T] [--threads K]

FILE is a Matrix Market file, or a scipy `.npz` (save_npz: much faster to read for big matrices).

Rank 0 reads and checks the matrix, orders it by reverse Cuthill-McKee, cuts the band into row
blocks (native/distributed.py) and sends each rank its rows and its part of b = (alpha I + S) 1;
every rank builds its part and runs MRS; rank 0 gathers x and prints one JSON line (with
`--out X.npy`, x in the file's order is saved there).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp


def mpiexec() -> str:
    """The mpiexec of the MPI that mpi4py runs on: the `mpich` wheel's, beside this Python,
    else the first on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    found = str(here) if here.exists() else shutil.which("mpiexec")
    if not found:
        raise FileNotFoundError("no mpiexec: install the MPI runtime (pip install mpich mpi4py)")
    return found


def command(ranks: int, threads: int, *args: str) -> tuple[list[str], dict[str, str]]:
    """(argv, env) of an `mpiexec` job running this program on `ranks` ranks of `threads`
    OpenMP threads each: the row blocks of each rank's split (`--threads`) and OMP_NUM_THREADS,
    which must be set before the kernels' library loads (an OpenMP runtime that starts with the
    machine's thread count keeps spinning threads that the other ranks' cores need)."""
    if ranks < 1 or threads < 1:
        raise ValueError(f"ranks and threads must be >= 1, got {ranks} and {threads}")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    # `-m mpi4py` aborts the whole job on an uncaught exception in any rank (else the others
    # would wait for it forever)
    return [
        mpiexec(),
        "-n",
        str(ranks),
        sys.executable,
        "-m",
        "mpi4py",
        "-m",
        "specmemo.native.mpi_solve",
        "--threads",
        str(threads),
        *args,
    ], env


def scatter(comm, lower=None, b_perm=None, threads: int = 1):
    """Rank 0 holds the permuted lower triangle (and b, or None); every rank gets its Part and
    its rows of b (None without b)."""
    from .distributed import cut, make_part

    rank, size = comm.Get_rank(), comm.Get_size()
    if rank == 0:
        offsets, starts = cut(lower, size)
        for r in range(size - 1, -1, -1):
            lo, hi = int(offsets[r]), int(offsets[r + 1])
            rows = lower[lo:hi]
            b_own = b_perm[lo:hi].copy() if b_perm is not None else None
            share = (offsets, starts, rows.indptr, rows.indices, rows.data, rows.shape, b_own)
            if r:
                comm.send(share, dest=r, tag=1)
    else:
        share = comm.recv(source=0, tag=1)
    offsets, starts, indptr, indices, data, shape, b_own = share
    rows = sp.csr_array((data, indices, indptr), shape=shape)
    return make_part(rank, offsets, starts, rows, threads), b_own


def row_counts(comm, part) -> list[int] | None:
    """Every rank's number of rows, on rank 0 (None elsewhere): the layout of gathers and scatters."""
    return comm.gather(part.hi - part.lo, root=0)


def gather(
    comm, x_own: np.ndarray, counts: list[int] | None, perm: np.ndarray | None, threads: int = 1
) -> np.ndarray | None:
    """The rows of every rank, on rank 0, back in the input's order (None elsewhere)."""
    if comm.Get_rank() != 0:
        comm.Gatherv(x_own, None, root=0)
        return None
    assert counts is not None, "rank 0 holds the row counts"
    banded = np.empty(sum(counts))
    comm.Gatherv(x_own, (banded, counts), root=0)
    assert perm is not None, "rank 0 holds the permutation"
    from .spmv import permuted  # after the environment is set (see command())

    return permuted(perm, banded, threads, inverse=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="distributed MRS on MPI ranks")
    p.add_argument("file", nargs="?", help="a .mtx or .npz matrix to solve once")
    p.add_argument("--serve", metavar="ENDPOINT", help="serve commands from this PAIR endpoint instead")
    p.add_argument("--parent", type=int, default=0, help="with --serve: stop when this pid is gone")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--tol", type=float, default=1e-10)
    p.add_argument("--maxiter", type=int, default=0, help="0: 10 n")
    p.add_argument("--threads", type=int, default=1, help="OpenMP threads per rank")
    p.add_argument("--out", help="save x (in the file's order) to this .npy file")
    args = p.parse_args(argv)
    from mpi4py import MPI

    from .distributed import MpiExchange, mrs

    comm = MPI.COMM_WORLD
    if args.serve:
        return serve(comm, args.serve, args.threads, args.parent)
    if not args.file:
        p.error("give a matrix file, or --serve ENDPOINT")
    lower = b_perm = perm = None
    n = 0
    if comm.Get_rank() == 0:
        from scipy.sparse import load_npz as read_npz

        from .matrices import read_mtx
        from .plan import reordered_lower
        from .validate import check_matrix

        try:
            source = read_npz(args.file) if args.file.endswith(".npz") else read_mtx(args.file)
            a = check_matrix(source, "skew")
        except Exception as exc:  # every rank must hear of it, not hang
            comm.bcast({"error": f"{type(exc).__name__}: {exc}"}, root=0)
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
            return 2
        n = a.shape[0]
        perm, lower = reordered_lower(a)
        b_perm = (args.alpha * np.ones(n) + a @ np.ones(n))[perm]
        comm.bcast({"n": n}, root=0)
    else:
        head = comm.bcast(None, root=0)
        if "error" in head:
            return 2
        n = head["n"]
    part, b_own = scatter(comm, lower, b_perm, args.threads)
    comm.Barrier()
    exchange = MpiExchange(comm, part)
    result = mrs(part, exchange, b_own, args.alpha, args.tol, args.maxiter or 10 * n)
    seconds = comm.reduce(result.seconds, op=MPI.MAX, root=0)
    waits = comm.gather((exchange.halo_s, exchange.reduce_s), root=0)
    halo = comm.gather(part.halo_bytes(), root=0)
    x = gather(comm, result.x, row_counts(comm, part), perm)
    if comm.Get_rank() == 0:
        assert x is not None and waits is not None, "rank 0 gathers"
        if args.out:
            np.save(args.out, x)
        print(
            json.dumps(
                {
                    "n": n,
                    "ranks": comm.Get_size(),
                    "threads": args.threads,
                    "converged": result.converged,
                    "iterations": result.iterations,
                    "residual": result.residual,
                    "seconds": seconds,
                    "halo_bytes": halo,
                    "halo_s": [w[0] for w in waits],
                    "allreduce_s": [w[1] for w in waits],
                    "max_err": float(np.max(np.abs(x - 1.0))) if n else 0.0,
                }
            ),
            flush=True,
        )
    return 0 if result.converged else 3


# ---------------------------------------------------------------- a resident job (the solver actor's)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _broadcast_idle(comm, head):
    """Rank 0's next command to every rank. The other ranks wait for it by testing a
    non-blocking broadcast every 2 ms: MPICH's blocking calls spin, and an idle job would keep
    a core busy per rank (between commands, not during a solve)."""
    import time

    signal_ = np.zeros(1, dtype=np.int64)
    request = comm.Ibcast(signal_, root=0)
    if comm.Get_rank() == 0:
        request.Wait()
    else:
        while not request.Test():
            time.sleep(0.002)
    return comm.bcast(head, root=0)


def serve(comm, endpoint: str, threads: int, parent: int = 0) -> int:
    """Serve commands from the process at `endpoint` (rank 0 connects a PAIR socket; the other
    ranks follow through broadcasts) until "stop". Plans stay resident between commands.

    Commands are dicts: register {key, indptr, indices, data, n}, solve {key, b, alpha, tol,
    maxiter}, matvec {key, x}, drop {key}, stop. Replies: {"ok": ...} or {"error": [name, text]}.
    Pickle is the encoding: the only peer is the actor that started this job, over an ipc
    socket in its private (0700) directory. The job stops by itself when `parent` (the actor's
    pid) is gone: an actor killed outright cannot ask it to.
    """
    import zmq
    from mpi4py import MPI

    from .distributed import MpiExchange, apply, mrs
    from .job_wire import recv_obj, send_obj
    from .plan import bandwidth, reordered_lower
    from .spmv import permuted
    from .validate import check_matrix

    rank = comm.Get_rank()
    sock: Any = None  # rank 0's channel to the actor; the others never touch it
    if rank == 0:
        sock = zmq.Context.instance().socket(zmq.PAIR)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.connect(endpoint)
        send_obj(sock, {"ok": {"ranks": comm.Get_size(), "pid": os.getpid()}})
    held: dict[str, tuple] = {}  # key -> (Part, MpiExchange, n, and on rank 0: perm, row counts)
    while True:
        # the matrix and the command: rank 0's (None on the other ranks until broadcast)
        head: Any = None
        cmd: Any = None
        lower: Any = None
        perm: Any = None
        a: Any = None
        before: Any = None
        if rank == 0:
            while not sock.poll(1000):
                if parent and not _alive(parent):
                    break
            cmd = recv_obj(sock) if sock.poll(0) else {"op": "stop"}
            op, key = cmd.get("op"), cmd.get("key")
            try:  # what can fail is checked here, before any collective step
                if op == "register":
                    a = check_matrix(
                        sp.csr_array((cmd["data"], cmd["indices"], cmd["indptr"]), shape=(cmd["n"], cmd["n"])), "skew"
                    )
                    perm, lower = reordered_lower(a)
                    before = bandwidth(a)
                elif op in ("solve", "matvec", "drop") and key not in held:
                    raise KeyError(f"no matrix {key!r} in this job")
                elif op not in ("solve", "matvec", "drop", "stop", "register"):
                    raise ValueError(f"unknown command {op!r}")
            except Exception as exc:
                send_obj(sock, {"error": [type(exc).__name__, str(exc)]})
                continue
            head = {"op": op, "key": key, **{k: cmd[k] for k in ("alpha", "tol", "maxiter") if k in cmd}}
        head = _broadcast_idle(comm, head)
        op, key = head["op"], head["key"]
        if op == "stop":
            break
        if op == "drop":
            held.pop(key, None)
            if rank == 0:
                send_obj(sock, {"ok": True})
            continue
        if op == "register":
            n = comm.bcast(lower.shape[0] if rank == 0 else None, root=0)
            part, _ = scatter(comm, lower, None, threads)
            held[key] = (part, MpiExchange(comm, part), n, perm, row_counts(comm, part))
            stats = comm.gather(
                (part.nnz, *part.shares(), part.split.work_size, part.halo_bytes(), part.lo - part.start), root=0
            )
            if rank == 0:
                nnz, inner, middle, outer, window, halo, reach = (list(c) for c in zip(*stats))
                stored = max(sum(nnz), 1)
                send_obj(
                    sock,
                    {
                        "ok": {
                            "n": n,
                            "nnz": int(a.nnz),
                            "nnz_stored": sum(nnz),
                            "bandwidth_before": before,
                            "bandwidth_after": max(reach + [0]),
                            "share_inner": sum(inner) / stored,
                            "share_middle": sum(middle) / stored,
                            "share_outer": sum(outer) / stored,
                            "window_rows": sum(window),
                            "halo_bytes": halo,
                        }
                    },
                )
            continue
        part, exchange, n, perm, counts = held[key]
        vector = None
        if rank == 0:
            vector = permuted(perm, np.ascontiguousarray(cmd["b" if op == "solve" else "x"], dtype=np.float64), threads)
        mine = np.empty(part.hi - part.lo)
        comm.Scatterv((vector, counts) if rank == 0 else None, mine, root=0)
        if op == "solve":
            result = mrs(part, exchange, mine, head["alpha"], head["tol"], head["maxiter"] or 10 * n)
            seconds = comm.reduce(result.seconds, op=MPI.MAX, root=0)
            x = gather(comm, result.x, counts, perm, threads)
            if rank == 0:
                send_obj(
                    sock,
                    {
                        "ok": {
                            "x": x,
                            "converged": result.converged,
                            "iterations": result.iterations,
                            "residual": result.residual,
                            "seconds": seconds,
                            "history": result.history,
                        }
                    },
                )
        else:
            v = np.zeros(part.m)
            v[part.own] = mine
            w = apply(part, exchange, v, np.empty(part.m))
            y = gather(comm, w[part.own].copy(), counts, perm, threads)
            if rank == 0:
                send_obj(sock, {"ok": {"y": y}})
    if rank == 0:
        try:
            send_obj(sock, {"ok": "stopped"}, flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # nobody left to tell
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
