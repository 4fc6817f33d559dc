"""Distributed MRS on this machine: 1 rank x 2 threads against 2 ranks x 1 thread (the same two
cores), on the 4M-row convection grid of bench/spmv.py.

    .venv/bin/python bench/mpi.py --rounds 3

Each configuration is an `mpiexec` job of native/mpi_solve.py (rank 0 reads the matrix, orders it
by RCM, cuts it into row blocks and scatters them; every rank runs MRS); the jobs alternate round by
round. Reported: MRS seconds (slowest rank, set-up excluded), per iteration, the halo bytes per
product, and how far the 2-rank x is from the 1-rank x. Writes bench/results/mpi.json and the
"MRS on MPI ranks" section of docs/benchmarks.md.

Then the solver actor itself, as a client sees it: a deployment whose solver runs MRS on 2 ranks x
1 thread (`ranks = 2`) and one whose solver runs it in its own process on 2 threads, each timed
from the client's `solve` call to its reply (b and x cross the wire), against scipy's
gmres(20) to the same tolerance on scipy's product in RCM order, in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from specdecode import replace_section  # noqa: E402

from specmemo.deploy.local import LocalDeployment  # noqa: E402
from specmemo.native import matrices  # noqa: E402
from specmemo.native.mpi_solve import command, mpiexec  # noqa: E402

SECTION = "## MRS on MPI ranks"
CONFIGS = [(1, 2), (2, 1), (1, 1)]  # (ranks, threads per rank)
ACTOR_CONFIG = """[deployment]
name = "{name}"
max_message_bytes = 1073741824

[actors.solver]
kind = "solver"
start_timeout_s = 120
[actors.solver.config]
threads = {threads}
ranks = {ranks}
"""


def through_the_actor(a: sp.csr_array, b: np.ndarray, ranks: int, threads: int, tol: float) -> dict:
    """One deployment: register `a`, solve once to warm, then time a solve from the client."""
    dep = LocalDeployment(
        ACTOR_CONFIG.format(name=f"mpiactor{ranks}", threads=threads, ranks=ranks), prefix="smmpiactor"
    ).wait_ready(["solver"], timeout=120)
    try:
        with dep.client(timeout=600) as c:
            t0 = time.perf_counter()
            c.register_matrix(a, id="grid")
            register_s = time.perf_counter() - t0
            c.solve("grid", b, alpha=1.0, tol=tol)  # warm: pages, the job's first solve
            t0 = time.perf_counter()
            out = c.solve("grid", b, alpha=1.0, tol=tol)
            wall = time.perf_counter() - t0
        return {
            "ranks": ranks,
            "threads": threads,
            "register_s": register_s,
            "solve_s": wall,
            "actor_s": out.seconds,
            "iterations": out.iterations,
            "residual": out.residual,
        }
    finally:
        dep.cleanup()


def gmres_seconds(a: sp.csr_array, b: np.ndarray, tol: float) -> dict:
    """scipy gmres (restart 20) on (I + S) in scipy's RCM order, to ||r|| <= tol ||b||."""
    import scipy.sparse.linalg as sla
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    perm = reverse_cuthill_mckee(a, symmetric_mode=True)
    ordered = sp.csr_array(a[perm][:, perm])
    ordered.sort_indices()
    bp = b[perm]
    op = sla.LinearOperator(a.shape, matvec=lambda v: v + ordered @ v, dtype=np.float64)
    t0 = time.perf_counter()
    x, info = sla.gmres(op, bp, rtol=tol, atol=0.0, maxiter=100_000)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "converged": info == 0,
        "residual": float(np.linalg.norm(bp - (x + ordered @ x)) / np.linalg.norm(bp)),
    }


LATENCY = """
import json, time
import numpy as np
from mpi4py import MPI
comm = MPI.COMM_WORLD
other, out = 1 - comm.rank, {}
for name, n in (("exchange_8B", 1), ("exchange_16kB", 2000)):
    mine, theirs = np.ones(n), np.empty(n)
    for rep in range(2):
        comm.Barrier()
        t0 = time.perf_counter()
        for _ in range(2000):
            MPI.Request.Waitall([comm.Irecv(theirs, source=other), comm.Isend(mine, dest=other)])
        out[name] = (time.perf_counter() - t0) / 2000 * 1e6
one, total = np.ones(1), np.empty(1)
for rep in range(2):
    comm.Barrier()
    t0 = time.perf_counter()
    for _ in range(2000):
        comm.Allreduce(one, total)
    out["allreduce_8B"] = (time.perf_counter() - t0) / 2000 * 1e6
if comm.rank == 0:
    print(json.dumps(out))
"""


def mpi_latency(root: Path) -> dict:
    """Microseconds of a neighbour exchange (8 B and 16 kB, both ways at once) and of an 8-byte
    Allreduce between 2 ranks: the model's latency (docs/spmv.md, "Scale model")."""
    script = root / "latency.py"
    script.write_text(LATENCY)
    proc = subprocess.run(
        [mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", str(script)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout + proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(path: Path, ranks: int, threads: int, out: Path, tol: float) -> dict:
    argv, env = command(ranks, threads, str(path), "--alpha", "1.0", "--tol", str(tol), "--out", str(out))
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout + proc.stderr)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    if (report["ranks"], report["threads"]) != (ranks, threads):
        raise RuntimeError(f"asked for {ranks} x {threads}, the job ran {report['ranks']} x {report['threads']}")
    report["job_seconds"] = time.perf_counter() - t0
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--grid", type=int, default=2000, help="the convection grid's side (2000: n = 4M)")
    p.add_argument("--tol", type=float, default=1e-10)
    p.add_argument("--actor-tol", type=float, default=1e-8, help="tolerance of the actor and gmres comparison")
    args = p.parse_args()
    from specmemo.actors.engine.precision import cpu_features

    root = Path(tempfile.mkdtemp(prefix="smmpi", dir="/tmp"))
    path = root / "grid.npz"
    grid = matrices.scramble(matrices.convection_2d(args.grid, args.grid), 1)
    sp.save_npz(path, grid)
    latency = mpi_latency(root)
    print(f"MPI latency (µs): {latency}", flush=True)
    rows: dict[str, list[dict]] = {f"{r}x{t}": [] for r, t in CONFIGS}
    for i in range(args.rounds):
        for ranks, threads in CONFIGS if i % 2 == 0 else CONFIGS[::-1]:
            key = f"{ranks}x{threads}"
            report = run(path, ranks, threads, root / f"x{key}.npy", args.tol)
            rows[key].append(report)
            print(
                f"round {i + 1} {ranks} ranks x {threads} threads: {report['seconds']:.3f} s, "
                f"{report['iterations']} iterations, residual {report['residual']:.2e}",
                flush=True,
            )
    b = np.random.default_rng(1).standard_normal(grid.shape[0])
    actor = [through_the_actor(grid, b, 2, 1, args.actor_tol), through_the_actor(grid, b, 0, 2, args.actor_tol)]
    gmres = gmres_seconds(grid, b, args.actor_tol)
    for row in actor:
        print(
            f"through the actor, ranks {row['ranks']} x {row['threads']} threads: {row['solve_s']:.3f} s "
            f"({row['iterations']} iterations); gmres {gmres['seconds']:.3f} s",
            flush=True,
        )
    x1, x2 = np.load(root / "x1x2.npy"), np.load(root / "x2x1.npy")
    diff = float(np.linalg.norm(x2 - x1) / np.linalg.norm(x1))
    cpu = cpu_features().as_dict()
    n = args.grid**2

    def med(key: str, field: str) -> float:
        return statistics.median(r[field] for r in rows[key])

    result = {
        "cpu": cpu,
        "n": n,
        "rows": rows,
        "x_2rank_vs_1rank": diff,
        "actor": actor,
        "gmres": gmres,
        "latency_us": latency,
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "mpi.json").write_text(json.dumps(result, indent=1))
    base = med("1x2", "seconds")
    lines = [
        SECTION,
        "",
        f"Command: `python bench/mpi.py --rounds {args.rounds}`. Run {result['finished']}, CPU `{cpu['model']}` "
        f"(flags {', '.join(cpu['flags'])}), MPICH (the `mpich` wheel) through mpi4py. Convection grid "
        f"{args.grid} x {args.grid} (n = {n:,}), scrambled, then RCM; MRS with alpha = 1 to tol {args.tol:g}; "
        "medians of the rounds, set-up (read, RCM, scatter) excluded.",
        "",
        "| ranks x threads | MRS seconds | per iteration | iterations | vs 1 rank x 2 threads | "
        "halo bytes per product (per rank) | in halo exchanges, in Allreduce (per iteration, slowest rank) |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for key in rows:
        it = max(rows[key][0]["iterations"], 1)
        halo = statistics.median(max(r["halo_s"]) for r in rows[key]) / it * 1e6
        reduce = statistics.median(max(r["allreduce_s"]) for r in rows[key]) / it * 1e6
        lines.append(
            f"| {key.replace('x', ' x ')} | {med(key, 'seconds'):.3f} | {med(key, 'seconds') / it * 1e3:.2f} ms "
            f"| {it} | {base / med(key, 'seconds'):.2f}x | {rows[key][0]['halo_bytes']} | "
            f"{halo:.0f} µs, {reduce:.0f} µs |"
        )
    lines += [
        "",
        f"x from 2 ranks against x from 1 rank: {diff:.1e} relative (goal 1e-12).",
        "",
        f"MPI between 2 ranks here (2000 rounds each): a neighbour exchange both ways "
        f"{latency['exchange_8B']:.1f} µs for 8 bytes, {latency['exchange_16kB']:.1f} µs for 16 kB (one "
        f"halo of this grid); an 8-byte Allreduce {latency['allreduce_8B']:.1f} µs.",
        "",
        f"Through the solver actor (client call to reply, b and x over the wire; second solve of a registered "
        f"matrix), tol {args.actor_tol:g}, against scipy gmres(20) to the same tolerance (RCM order, "
        f"{gmres['seconds']:.2f} s, residual {gmres['residual']:.1e}):",
        "",
        "| solver actor | solve (client) | MRS on the actor | iterations | register + plan | x gmres(20) (goal ≥ 6) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in actor:
        where = f"ranks = {row['ranks']}, 1 thread each" if row["ranks"] else f"in process, {row['threads']} threads"
        lines.append(
            f"| {where} | {row['solve_s']:.3f} s | {row['actor_s']:.3f} s | {row['iterations']} | "
            f"{row['register_s']:.1f} s | {gmres['seconds'] / row['solve_s']:.1f}x |"
        )
    lines.append("")
    replace_section(ROOT / "docs" / "benchmarks.md", SECTION, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
