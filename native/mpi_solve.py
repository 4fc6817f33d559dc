"""The program every MPI rank runs for a distributed solve:

    mpiexec -n N python -m specmemo.native.mpi_solve FILE.mtx [--alpha A] [--tol T] [--threads K]

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

import numpy as np


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
    OpenMP threads each. OMP_NUM_THREADS must be set before the kernels' library loads: an
    OpenMP runtime that starts with the machine's thread count keeps spinning threads that
    the other ranks' cores need (2 ranks on 2 cores ran 100x slower without it)."""
    if ranks < 1 or threads < 1:
        raise ValueError(f"ranks and threads must be >= 1, got {ranks} and {threads}")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return [mpiexec(), "-n", str(ranks), sys.executable, "-m", "specmemo.native.mpi_solve", *args], env


def scatter(comm, lower=None, b_perm=None, threads: int = 1):
    """Rank 0 holds the permuted lower triangle and b; every rank gets its Part and its rows of b."""
    from .distributed import cut, make_part
    rank, size = comm.Get_rank(), comm.Get_size()
    if rank == 0:
        offsets, starts = cut(lower, size)
        for r in range(size - 1, -1, -1):
            lo, hi = int(offsets[r]), int(offsets[r + 1])
            rows = lower[lo:hi]
            share = (offsets, starts, rows.indptr, rows.indices, rows.data, rows.shape, b_perm[lo:hi].copy())
            if r:
                comm.send(share, dest=r, tag=1)
    else:
        share = comm.recv(source=0, tag=1)
    offsets, starts, indptr, indices, data, shape, b_own = share
    import scipy.sparse as sp
    rows = sp.csr_array((data, indices, indptr), shape=shape)
    return make_part(rank, offsets, starts, rows, threads), b_own


def gather(comm, part, x_own: np.ndarray, n: int):
    """x in band order on rank 0 (None elsewhere)."""
    counts = comm.gather(len(x_own), root=0)
    out = np.empty(n) if comm.Get_rank() == 0 else None
    comm.Gatherv(x_own, (out, counts) if out is not None else None, root=0)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="distributed MRS on MPI ranks")
    p.add_argument("file")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--tol", type=float, default=1e-10)
    p.add_argument("--maxiter", type=int, default=0, help="0: 10 n")
    p.add_argument("--threads", type=int, default=1, help="OpenMP threads per rank")
    p.add_argument("--out", help="save x (in the file's order) to this .npy file")
    args = p.parse_args(argv)
    from mpi4py import MPI

    from .distributed import MpiExchange, mrs
    comm = MPI.COMM_WORLD
    lower = b_perm = perm = None
    n = 0
    if comm.Get_rank() == 0:
        from .matrices import read_mtx
        from .plan import reordered_lower
        from .validate import check_matrix
        try:
            a = check_matrix(read_mtx(args.file), "skew")
        except Exception as exc:                      # every rank must hear of it, not hang
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
    result = mrs(part, MpiExchange(comm, part), b_own, args.alpha, args.tol, args.maxiter or 10 * n)
    seconds = comm.reduce(result.seconds, op=MPI.MAX, root=0)
    halo = comm.gather(part.halo_bytes(), root=0)
    x_perm = gather(comm, part, result.x, n)
    if comm.Get_rank() == 0:
        x = np.empty(n)
        x[perm] = x_perm
        if args.out:
            np.save(args.out, x)
        print(json.dumps({"n": n, "ranks": comm.Get_size(), "threads": args.threads,
                          "converged": result.converged, "iterations": result.iterations,
                          "residual": result.residual, "seconds": seconds, "halo_bytes": halo,
                          "max_err": float(np.max(np.abs(x - 1.0))) if n else 0.0}), flush=True)
    return 0 if result.converged else 3


if __name__ == "__main__":
    sys.exit(main())
