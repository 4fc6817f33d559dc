"""MRS on MPI ranks: the row-block partition checked in one process against scipy (Hypothesis over
partitions), and real `mpiexec` jobs of 2 and 3 ranks against the one-process solver and scipy."""

from __future__ import annotations

import json
import subprocess
import time

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specmemo.native import matrices
from specmemo.native.distributed import cut, local_product, parts
from specmemo.native.errors import InvalidOperand
from specmemo.native.mpi_solve import command
from specmemo.native.plan import reordered_lower
from specmemo.native.solver import solve_file
from specmemo.native.validate import check_matrix


def _lower(a) -> sp.csr_array:
    return reordered_lower(check_matrix(a, "skew"))[1]


@st.composite
def partitioned(draw):
    """A skew matrix (a generated family, or block diagonal so that some halos are empty) and
    a partition of its rows into 1-8 ranks, one-row and empty ranks included."""
    if draw(st.booleans()):
        family = draw(st.sampled_from(sorted(matrices.FAMILIES)))
        a = matrices.generate(family, draw(st.integers(1, 300)), seed=draw(st.integers(0, 5)))
    else:
        blocks = [matrices.generate("random", draw(st.integers(1, 30)), seed=i) for i in range(draw(st.integers(1, 4)))]
        a = sp.block_diag(blocks, format="csr")
    lower = _lower(a)
    n = lower.shape[0]
    ranks = draw(st.integers(1, 8))
    cuts = sorted(draw(st.lists(st.integers(0, n), min_size=ranks - 1, max_size=ranks - 1)))
    return lower, ranks, np.array([0, *cuts, n])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(partitioned(), st.integers(1, 2), st.integers(0, 2**31 - 1))
def test_the_product_through_rank_blocks_and_halos_equals_scipy(case, threads, seed):
    lower, ranks, offsets = case
    x = np.random.default_rng(seed).standard_normal(lower.shape[0])
    all_parts = parts(lower, ranks, threads, offsets)
    got = local_product(all_parts, x)
    want = (lower - lower.T) @ x
    assert np.allclose(got, want, rtol=1e-12, atol=1e-12 * max(1.0, np.abs(want).max(initial=0)))
    for p in all_parts:  # halos come from lower ranks only, one bandwidth wide
        assert p.start <= p.lo and all(k.peer < p.rank for k in p.below) and all(k.peer > p.rank for k in p.above)


def test_a_banded_matrix_has_halos_one_bandwidth_wide_from_the_neighbours_only():
    lower = _lower(matrices.generate("convection2d", 10_000, seed=1))
    bandwidth = int((np.repeat(np.arange(lower.shape[0]), np.diff(lower.indptr)) - lower.indices).max())
    all_parts = parts(lower, 4)
    for p in all_parts:
        assert [k.peer for k in p.below] == ([p.rank - 1] if p.rank else [])
        assert p.lo - p.start <= bandwidth
    assert max(p.halo_bytes() for p in all_parts) <= 8 * 2 * bandwidth


def test_offsets_that_do_not_partition_the_rows_are_refused():
    lower = _lower(matrices.generate("random", 20, seed=0))
    for bad in ([0, 5], [0, 30, 20], [1, 10, 20], [0, 12, 8, 20]):
        with pytest.raises(InvalidOperand, match="offsets"):
            cut(lower, len(bad) - 1, np.array(bad))
    with pytest.raises(InvalidOperand, match="ranks"):
        cut(lower, 0)


def _mpi_solve(path, ranks: int, out, alpha: float = 1.0, threads: int = 1) -> dict:
    argv, env = command(ranks, threads, str(path), "--alpha", str(alpha), "--tol", "1e-12", "--out", str(out))
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (report["ranks"], report["threads"]) == (ranks, threads)  # the job ran as asked
    return report


@pytest.mark.parametrize("family", sorted(matrices.FAMILIES))
def test_ranks_and_threads_solve_like_one_process_and_scipy(family, tmp_path):
    a = matrices.generate(family, 3000, seed=4)
    path = tmp_path / "m.mtx"
    matrices.write_mtx(path, a)
    alpha = 1.0
    serial = solve_file(path, alpha, tol=1e-12)
    a = matrices.read_mtx(path)
    b = alpha * np.ones(a.shape[0]) + a @ np.ones(a.shape[0])
    exact = spla.spsolve(sp.csc_array(alpha * sp.eye_array(a.shape[0]) + a), b)
    for ranks, threads in ((2, 1), (3, 1), (1, 2)):
        report = _mpi_solve(path, ranks, tmp_path / f"x{ranks}.npy", alpha, threads)
        x = np.load(tmp_path / f"x{ranks}.npy")
        assert report["converged"] and report["ranks"] == ranks
        assert report["iterations"] == serial.iterations
        assert np.linalg.norm(x - serial.x) <= 1e-10 * np.linalg.norm(serial.x)
        assert np.linalg.norm(x - exact) <= 1e-8 * np.linalg.norm(exact)


def test_the_solve_command_runs_on_ranks_and_reports_a_bad_file(tmp_path):
    import sys

    path = tmp_path / "m.mtx"
    matrices.write_mtx(path, matrices.generate("convection2d", 2000, seed=0))
    ok = subprocess.run(
        [sys.executable, "-m", "specmemo.deploy.cli", "solve", str(path), "--ranks", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert "on 2 ranks" in ok.stdout and "converged" in ok.stdout
    (tmp_path / "bad.mtx").write_text("%%MatrixMarket matrix coordinate real general\n2 2 1\n1 2 1.0\n")
    bad = subprocess.run(
        [sys.executable, "-m", "specmemo.deploy.cli", "solve", str(tmp_path / "bad.mtx"), "--ranks", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "NotSkewSymmetric" in bad.stderr


RANKS_CONFIG = """
[deployment]
name = "{name}"
heartbeat_s = 0.5
heartbeat_misses = 20
stop_timeout_s = 5

[actors.solver]
kind = "solver"
[actors.solver.config]
ranks = 2
threads = 1
"""


def _rank_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "specmemo.native.mpi_solve .*--serve"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_the_solver_actor_on_two_ranks_solves_like_scipy_and_survives_a_killed_rank(start_deployment):
    import os
    import signal

    from specmemo.protocol import ActorDied, InvalidInput

    d = start_deployment(RANKS_CONFIG.format(name="ranks"), "ranks", ["solver"])
    a = matrices.generate("convection2d", 4000, seed=7)
    b = np.random.default_rng(1).standard_normal(a.shape[0])
    exact = spla.spsolve(sp.csc_array(sp.eye_array(a.shape[0]) + a), b)
    with d.client(timeout=120) as c:
        report = c.register_matrix(a, id="grid")
        assert report.n == a.shape[0] and report.threads == 2
        out = c.solve("grid", b, alpha=1.0, tol=1e-12, history=True)
        assert out.converged and np.linalg.norm(out.x - exact) <= 1e-9 * np.linalg.norm(exact)
        assert len(out.history) == out.iterations
        x = np.ones(a.shape[0])
        assert np.allclose(c.matvec("grid", x), a @ x, rtol=1e-12, atol=1e-12)
        with pytest.raises(InvalidInput, match="NotSkewSymmetric|skew"):
            c.register_matrix(sp.csr_array(np.array([[0.0, 1.0], [1.0, 0.0]])), id="bad")
        ranks = _rank_pids()
        assert len(ranks) >= 2
        os.kill(ranks[-1], signal.SIGKILL)  # one rank (mpiexec then ends the job)
        with pytest.raises(ActorDied, match="MPI job"):
            c.solve("grid", b, alpha=1.0, tol=1e-12)
        again = c.solve("grid", b, alpha=1.0, tol=1e-12)  # a new job; the plan registers again
        assert again.converged and np.allclose(again.x, out.x, rtol=1e-10, atol=1e-12)
        assert _rank_pids()
        actor = next(a.pid for a in c.actors() if a.name == "solver")
        os.kill(actor, signal.SIGKILL)  # the actor dies outright: its job stops itself
        deadline = time.monotonic() + 20
        while _rank_pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _rank_pids(), "the MPI job outlived its solver actor"
    d.stop()
    deadline = time.monotonic() + 15
    while _rank_pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _rank_pids(), "the MPI job outlived its solver actor"
