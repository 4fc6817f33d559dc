"""Benchmark of the banded skew-symmetric SpMV kernels against scipy and MKL, and of MRS
against scipy's GMRES.

    .venv/bin/python bench/spmv.py            # the full run (n = 4M and a few smaller)
    .venv/bin/python bench/spmv.py --quick    # small matrices, a minute or two

Each OMP_WAIT_POLICY runs in its own worker process (the policy is fixed when OpenMP starts),
and MKL in another (it brings its own OpenMP runtime). Every worker generates the same seeded
matrices, reorders them by RCM and times, as medians of --reps runs after two warm-ups:
scipy `S @ x` on the matrix as given and in RCM order, our serial full CSR, serial half
storage, graph colouring and the 3-part banded kernel at 1 and 2 threads (in its compact forms
too, and the coded form once more with its uniform row groups off, as the row loop runs it),
and the streaming triad. Bytes are modelled (8-byte values, 4-byte indices, k = nnz/n): full
CSR 12 nnz + 20 n, half storage 6 nnz + 28 n (COMPACT_BYTES for the compact forms); the
fraction of bandwidth is (bytes / time) / triad bandwidth at the same thread count. Writes
bench/results/spmv.json and spmv.png and prints a markdown table.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as sla

from specmemo.native import Plan, matrices
from specmemo.native import spmv as K
from specmemo.native.solver import mrs

RESULTS = Path(__file__).resolve().parent / "results"
TRIAD_N = 1 << 25  # three arrays of 256 MiB: far past the last-level cache
THREADS = (1, 2)

FULL = {
    "conv2d-2000": lambda: matrices.scramble(matrices.convection_2d(2000, 2000), 1),
    "conv3d-128": lambda: matrices.scramble(matrices.convection_3d(128, 128, 128), 2),
    "outliers-2M": lambda: matrices.scramble(matrices.band_with_outliers(2_000_000, 60, 0.1, 2000, 3), 4),
    "random-500k": lambda: matrices.scramble(matrices.random_skew(500_000, 16 / 500_000, 5), 6),
}
QUICK = {
    "conv2d-700": lambda: matrices.scramble(matrices.convection_2d(700, 700), 1),
    "outliers-300k": lambda: matrices.scramble(matrices.band_with_outliers(300_000, 60, 0.1, 300, 3), 4),
}
# (matrix, alpha, tol): MRS against scipy gmres on the same system
SOLVES_FULL = [("conv2d-2000", 1.0, 1e-8), ("conv3d-128", 0.5, 1e-8)]
SOLVES_QUICK = [("conv2d-700", 1.0, 1e-8), ("conv2d-700", 0.1, 1e-8)]

FULL_CSR_KERNELS = ("scipy as given", "scipy", "mkl", "csr")


def median_seconds(fns: dict, reps: int) -> dict:
    """Median wall time of each callable over reps rounds, after two warm-up rounds. Rounds
    interleave the callables, so load from other processes falls on all of them alike."""
    for fn in list(fns.values()) * 2:
        fn()
    times = {key: [] for key in fns}
    for _ in range(reps):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(ts) for key, ts in times.items()}


#: Bytes per stored entry (index + value) and per row (x, y and the row's offset or length) of
#: the compact forms of the 3-part kernel. All three keep 16-bit offsets from the row and 1-byte
#: row lengths (7 bytes a row fewer than 64-bit row offsets); "coded" is what a plan builds by
#: default when the matrix has at most 256 distinct values (1-byte codes into a table).
COMPACT_BYTES = {
    "3-part off16": (10, 21),
    "3-part off16 f32": (6, 21),
    "3-part coded": (3, 21),
    "3-part coded rows": (3, 21),
}


def modelled_bytes(kernel: str, n: int, nnz: int) -> int:
    if kernel in FULL_CSR_KERNELS:
        return 12 * nnz + 20 * n
    entry, row = COMPACT_BYTES.get(kernel, (12, 28))
    return entry * nnz // 2 + row * n


def triad_bandwidth(reps: int) -> dict:
    """Streaming triad a = b + s c at each thread count, bytes/s counted as 24 per element
    (STREAM's count)."""
    b, c, a = np.ones(TRIAD_N), np.full(TRIAD_N, 2.0), np.empty(TRIAD_N)
    fns = {t: (lambda t=t: K.triad(a, b, c, 3.0, t)) for t in THREADS}
    return {t: 24 * TRIAD_N / sec for t, sec in median_seconds(fns, reps).items()}


def prepared(name: str, table: dict):
    a = sp.csr_array(table[name]())
    plan = Plan.build(a, threads=1, compact=False)  # the serial and colouring kernels need 32-bit columns
    ordered = sp.csr_array(a[plan.perm][:, plan.perm])
    ordered.sort_indices()
    return a, plan, ordered


def worker(names: list[str], table: dict, solves: list, reps: int) -> dict:
    out = {"policy": os.environ.get("OMP_WAIT_POLICY", "unset"), "triad": {}, "matrices": {}, "solves": []}
    out["triad"] = triad_bandwidth(max(5, reps // 3))
    for name in names:
        a, plan, ordered = prepared(name, table)
        n = a.shape[0]
        x = np.random.default_rng(0).standard_normal(n)
        xp = x[plan.perm]
        y = np.empty(n)
        full = K.CsrMatrix.from_scipy(ordered)
        colouring = K.Colouring.of(plan.half)
        fns = {
            ("scipy as given", 1): lambda: a @ x,
            ("scipy", 1): lambda: ordered @ xp,
            ("csr", 1): lambda: K.csr_spmv(full, xp, y),
            ("half", 1): lambda: K.half_spmv(plan.half, xp, y),
        }
        reports = {}
        compact = {
            "3-part off16": plan.half.compacted(offsets=True, coded=False),
            "3-part off16 f32": plan.half.compacted(offsets=True, float32=True, coded=False),
        }
        coded = plan.half.compacted(offsets=True)
        if coded.vcode is not None:  # a matrix of at most 256 distinct values
            compact["3-part coded"] = coded
            if coded.uniform is not None:  # the same storage run row by row: no uniform groups
                rows_only = plan.half.compacted(offsets=True)
                rows_only.uniform[:] = 0
                compact["3-part coded rows"] = rows_only
        for t in THREADS:
            pt = plan if t == 1 else plan.for_threads(t)
            reports[t] = pt.describe().as_dict()
            fns[("colour", t)] = lambda t=t: K.colour_spmv(plan.half, colouring, xp, y, t)
            fns[("3-part", t)] = lambda pt=pt, work=pt.work(): pt.apply(xp, y, 0.0, None, work)
            for label, half in compact.items():
                fns[(label, t)] = lambda pt=pt, half=half, work=pt.work(): K.band_spmv(half, pt.split, xp, y, work)
        rows = [(k, t, sec) for (k, t), sec in median_seconds(fns, reps).items()]
        out["matrices"][name] = {
            "n": n,
            "nnz": int(a.nnz),
            "colours": colouring.colours,
            "plans": reports,
            "kernels": [{"kernel": k, "threads": t, "seconds": s} for k, t, s in rows],
        }
        for sname, alpha, tol in solves:
            if sname == name:
                out["solves"].append(compare_solvers(name, a, plan.for_threads(max(THREADS)), ordered, alpha, tol))
        a = plan = ordered = full = colouring = None  # freed before the next matrix is built
    return out


def compare_solvers(name, a, plan, ordered, alpha, tol) -> dict:
    """Time to ||b - (alpha I + S) x|| <= tol ||b||: MRS (our plan, fused kernel) against
    scipy gmres (defaults: restart 20) on a LinearOperator over scipy's RCM-ordered product."""
    n = a.shape[0]
    b = np.random.default_rng(1).standard_normal(n)
    start = time.perf_counter()
    result = mrs(plan, b, alpha, tol=tol, maxiter=100_000)
    mrs_seconds = time.perf_counter() - start
    perm = plan.perm
    bp = b[perm]
    products = [0]

    def matvec(v):
        products[0] += 1
        return alpha * v + ordered @ v

    op = sla.LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    start = time.perf_counter()
    xg, info = sla.gmres(op, bp, rtol=tol, atol=0.0, maxiter=100_000)
    gmres_seconds = time.perf_counter() - start
    gmres_residual = float(np.linalg.norm(bp - (alpha * xg + ordered @ xg)) / np.linalg.norm(bp))
    return {
        "matrix": name,
        "alpha": alpha,
        "tol": tol,
        "threads": plan.threads,
        "mrs_seconds": mrs_seconds,
        "mrs_iterations": result.iterations,
        "mrs_residual": result.residual,
        "mrs_converged": result.converged,
        "plan_seconds": plan.describe().build_seconds,
        "gmres_seconds": gmres_seconds,
        "gmres_products": products[0],
        "gmres_residual": gmres_residual,
        "gmres_converged": info == 0,
    }


def mkl_worker(names: list[str], table: dict, reps: int) -> dict:
    import sparse_dot_mkl

    out = {"matrices": {}}
    for name in names:
        a, plan, ordered = prepared(name, table)
        xp = np.random.default_rng(0).standard_normal(a.shape[0])[plan.perm]
        y = np.empty(a.shape[0])

        def product(t):
            sparse_dot_mkl.mkl_set_num_threads(t)
            sparse_dot_mkl.dot_product_mkl(ordered, xp, out=y)

        fns = {t: (lambda t=t: product(t)) for t in THREADS}
        rows = [{"kernel": "mkl", "threads": t, "seconds": sec} for t, sec in median_seconds(fns, reps).items()]
        out["matrices"][name] = {"kernels": rows}
    return out


def run_worker(args: list[str], env: dict) -> dict | str:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mkl_env() -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY="passive")
    lib = Path(sys.prefix) / "lib" / "libmkl_rt.so.3"
    if "MKL_RT" not in env and lib.exists():
        env["MKL_RT"] = str(lib)
    return env


def table_rows(results: dict) -> list[dict]:
    rows = []
    mkl = results.get("mkl") if isinstance(results.get("mkl"), dict) else {}
    for policy, res in results["policies"].items():
        for name, m in res["matrices"].items():
            kernels = list(m["kernels"])
            if policy == "passive":
                kernels += mkl.get("matrices", {}).get(name, {}).get("kernels", [])
            scipy_t = next(k["seconds"] for k in m["kernels"] if k["kernel"] == "scipy")
            for k in kernels:
                bw = modelled_bytes(k["kernel"], m["n"], m["nnz"]) / k["seconds"]
                rows.append(
                    {
                        "matrix": name,
                        "policy": policy if k["kernel"] != "mkl" else "mkl",
                        "kernel": k["kernel"],
                        "threads": k["threads"],
                        "ms": 1e3 * k["seconds"],
                        "gflops": 2 * m["nnz"] / k["seconds"] / 1e9,
                        "roofline": bw / res["triad"][str(k["threads"])],
                        "vs_scipy": scipy_t / k["seconds"],
                    }
                )
    return rows


def markdown(results: dict) -> str:
    lines = []
    first = next(iter(results["policies"].values()))
    lines.append("| matrix | n | nnz | bandwidth given -> RCM | inner / middle / outer (2 threads) | colours |")
    lines.append("|---|---:|---:|---|---|---:|")
    for name, m in first["matrices"].items():
        p = m["plans"]["2"]
        lines.append(
            f"| {name} | {m['n']:,} | {m['nnz']:,} | {p['bandwidth_before']:,} -> {p['bandwidth_after']:,} | "
            f"{p['share_inner']:.4f} / {p['share_middle']:.4f} / {p['share_outer']:.4f} | {m['colours']} |"
        )
    lines.append("")
    lines.append("| policy | threads | triad GB/s |")
    lines.append("|---|---:|---:|")
    for policy, res in results["policies"].items():
        for t, bw in res["triad"].items():
            lines.append(f"| {policy} | {t} | {bw / 1e9:.1f} |")
    lines.append("")
    lines.append("| matrix | OMP_WAIT_POLICY | kernel | threads | ms | GFLOP/s | of triad roofline | x scipy |")
    lines.append("|---|---|---|---:|---:|---:|---:|---:|")
    for r in table_rows(results):
        lines.append(
            f"| {r['matrix']} | {r['policy']} | {r['kernel']} | {r['threads']} | {r['ms']:.2f} | "
            f"{r['gflops']:.2f} | {r['roofline']:.2f} | {r['vs_scipy']:.2f} |"
        )
    if isinstance(results.get("mkl"), str):
        lines.append(f"\nMKL not measured: {results['mkl']}")
    solves = [s | {"policy": p} for p, res in results["policies"].items() for s in res["solves"]]
    if solves:
        lines.append("")
        lines.append(
            "| matrix | alpha | tol | policy | MRS s (iters, threads) | plan build s | gmres(20) s (products) | "
            "gmres / MRS | true residual MRS, gmres |"
        )
        lines.append("|---|---:|---:|---|---|---:|---|---:|---|")
        for s in solves:
            conv = "" if s["gmres_converged"] else " not converged"
            lines.append(
                f"| {s['matrix']} | {s['alpha']} | {s['tol']:g} | {s['policy']} | {s['mrs_seconds']:.2f} "
                f"({s['mrs_iterations']}, {s['threads']}) | {s['plan_seconds']:.1f} | {s['gmres_seconds']:.2f} "
                f"({s['gmres_products']}{conv}) | {s['gmres_seconds'] / s['mrs_seconds']:.1f} | "
                f"{s['mrs_residual']:.1e}, {s['gmres_residual']:.1e} |"
            )
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table_rows(results)
    policies = list(results["policies"])
    names = list(next(iter(results["policies"].values()))["matrices"])
    labels = [
        "scipy as given",
        "scipy",
        "mkl 1",
        "mkl 2",
        "csr",
        "half",
        "colour 1",
        "colour 2",
        "3-part 1",
        "3-part 2",
        "3-part off16 1",
        "3-part off16 2",
        "3-part off16 f32 1",
        "3-part off16 f32 2",
        "3-part coded 1",
        "3-part coded 2",
        "3-part coded rows 1",
        "3-part coded rows 2",
    ]
    fig, axes = plt.subplots(len(policies), 1, figsize=(11, 3.6 * len(policies)), squeeze=False)
    width = 0.8 / len(labels)
    for ax, policy in zip(axes[:, 0], policies):
        for li, label in enumerate(labels):
            vals = []
            for name in names:
                match = [
                    r["gflops"]
                    for r in rows
                    if r["matrix"] == name
                    and (r["policy"] == policy or r["kernel"] == "mkl")
                    and (
                        r["kernel"]
                        if r["kernel"] in ("scipy as given", "scipy", "csr", "half")
                        else f"{r['kernel']} {r['threads']}"
                    )
                    == label
                ]
                vals.append(match[0] if match else 0.0)
            ax.bar(np.arange(len(names)) + li * width, vals, width, label=label)
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
        ax.set_ylabel("GFLOP/s")
        ax.set_title(f"SpMV, OMP_WAIT_POLICY={policy} (2 shared vCPUs; medians)")
    axes[0, 0].legend(ncol=5, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small matrices and few repetitions")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per kernel (default 15, quick 5)")
    parser.add_argument("--policies", default="passive,active")
    parser.add_argument("--no-mkl", action="store_true")
    parser.add_argument("--only", default=None, help="comma-separated matrix names of the table (default: all)")
    parser.add_argument("--render", default=None, metavar="JSON", help="redraw the table and plot from a saved run")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mkl-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    table = QUICK if args.quick else FULL
    solves = SOLVES_QUICK if args.quick else SOLVES_FULL
    reps = args.reps or (5 if args.quick else 15)
    if args.worker is not None:
        print(json.dumps(worker(args.worker.split(","), table, solves, reps)))
        return 0
    if args.mkl_worker is not None:
        print(json.dumps(mkl_worker(args.mkl_worker.split(","), table, reps)))
        return 0

    if args.render is not None:
        results = json.loads(Path(args.render).read_text())
        plot(results, Path(args.render).with_suffix(".png"))
        print(markdown(results))
        return 0

    names = args.only or ",".join(table)
    solves = [s for s in solves if s[0] in names.split(",")]
    common = (["--quick"] if args.quick else []) + ["--reps", str(reps)]
    results = {"command": "bench/spmv.py " + " ".join(sys.argv[1:] if argv is None else argv), "policies": {}}
    for policy in args.policies.split(","):
        env = dict(os.environ, OMP_WAIT_POLICY=policy, OMP_PROC_BIND="false")
        print(f"running OMP_WAIT_POLICY={policy} ...", file=sys.stderr, flush=True)
        res = run_worker(["--worker", names, *common], env)
        if isinstance(res, str):
            raise SystemExit(f"worker for OMP_WAIT_POLICY={policy} failed: {res}")
        results["policies"][policy] = res
    if not args.no_mkl:
        print("running MKL ...", file=sys.stderr, flush=True)
        results["mkl"] = run_worker(["--mkl-worker", names, *common], mkl_env())
    RESULTS.mkdir(exist_ok=True)
    suffix = "-quick" if args.quick else ""
    (RESULTS / f"spmv{suffix}.json").write_text(json.dumps(results, indent=1))
    plot(results, RESULTS / f"spmv{suffix}.png")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
