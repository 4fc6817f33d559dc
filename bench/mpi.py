"""Distributed MRS on this machine: 1 rank x 2 threads against 2 ranks x 1 thread (the same two
cores), on the 4M-row convection grid of bench/spmv.py.

    .venv/bin/python bench/mpi.py --rounds 3

Each configuration is an `mpiexec` job of native/mpi_solve.py (rank 0 reads the matrix, orders it
by RCM, cuts it into row blocks and scatters them; every rank runs MRS); the jobs alternate round by
round. Reported: MRS seconds (slowest rank, set-up excluded), per iteration, the halo bytes per
product, and how far the 2-rank x is from the 1-rank x. Writes bench/results/mpi.json and the
"MRS on MPI ranks" section of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
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

from specmemo.native import matrices  # noqa: E402
from specmemo.native.mpi_solve import command  # noqa: E402

SECTION = "## MRS on MPI ranks"
CONFIGS = [(1, 2), (2, 1), (1, 1)]      # (ranks, threads per rank)


def run(path: Path, ranks: int, threads: int, out: Path, tol: float) -> dict:
    argv, env = command(ranks, threads, str(path), "--alpha", "1.0", "--tol", str(tol), "--out", str(out))
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout + proc.stderr)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["job_seconds"] = time.perf_counter() - t0
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--grid", type=int, default=2000, help="the convection grid's side (2000: n = 4M)")
    p.add_argument("--tol", type=float, default=1e-10)
    args = p.parse_args()
    from specmemo.actors.engine.precision import cpu_features
    root = Path(tempfile.mkdtemp(prefix="smmpi", dir="/tmp"))
    path = root / "grid.npz"
    sp.save_npz(path, matrices.scramble(matrices.convection_2d(args.grid, args.grid), 1))
    rows: dict[str, list[dict]] = {f"{r}x{t}": [] for r, t in CONFIGS}
    for i in range(args.rounds):
        for ranks, threads in (CONFIGS if i % 2 == 0 else CONFIGS[::-1]):
            key = f"{ranks}x{threads}"
            report = run(path, ranks, threads, root / f"x{key}.npy", args.tol)
            rows[key].append(report)
            print(f"round {i + 1} {ranks} ranks x {threads} threads: {report['seconds']:.3f} s, "
                  f"{report['iterations']} iterations, residual {report['residual']:.2e}", flush=True)
    x1, x2 = np.load(root / "x1x2.npy"), np.load(root / "x2x1.npy")
    diff = float(np.linalg.norm(x2 - x1) / np.linalg.norm(x1))
    cpu = cpu_features().as_dict()
    n = args.grid ** 2

    def med(key: str, field: str) -> float:
        return statistics.median(r[field] for r in rows[key])
    result = {"cpu": cpu, "n": n, "rows": rows, "x_2rank_vs_1rank": diff,
              "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "mpi.json").write_text(json.dumps(result, indent=1))
    base = med("1x2", "seconds")
    lines = [SECTION, "",
             f"Command: `python bench/mpi.py --rounds {args.rounds}`. Run {result['finished']}, CPU `{cpu['model']}` "
             f"(flags {', '.join(cpu['flags'])}), MPICH (the `mpich` wheel) through mpi4py. Convection grid "
             f"{args.grid} x {args.grid} (n = {n:,}), scrambled, then RCM; MRS with alpha = 1 to tol {args.tol:g}; "
             "medians of the rounds, set-up (read, RCM, scatter) excluded.", "",
             "| ranks x threads | MRS seconds | per iteration | iterations | vs 1 rank x 2 threads | halo bytes per product (per rank) |",
             "|---|---:|---:|---:|---:|---|"]
    for key in rows:
        it = rows[key][0]["iterations"]
        lines.append(f"| {key.replace('x', ' x ')} | {med(key, 'seconds'):.3f} | {med(key, 'seconds') / max(it, 1) * 1e3:.2f} ms "
                     f"| {it} | {base / med(key, 'seconds'):.2f}x | {rows[key][0]['halo_bytes']} |")
    lines += ["", f"x from 2 ranks against x from 1 rank: {diff:.1e} relative (goal 1e-12).", ""]
    replace_section(ROOT / "docs" / "benchmarks.md", SECTION, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
