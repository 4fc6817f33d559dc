"""The solver actor in a real deployment, checked against scipy."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from specmemo.actors.solver import MatrixStore
from specmemo.native import matrices
from specmemo.protocol import BadRequest, InvalidInput, NotFound, OverBudget
from specmemo.protocol.methods import RegisterMatrix

SOLVER_CONFIG = """
[deployment]
name = "{name}"
heartbeat_s = 0.3
stop_timeout_s = 3

[actors.solver]
kind = "solver"
[actors.solver.config]
threads = 2
max_nnz = {max_nnz}
"""


@pytest.fixture(scope="module")
def solver_deployment():
    from conftest import Deployment

    d = Deployment(SOLVER_CONFIG.format(name="solver", max_nnz=2_000_000), "solver")
    try:
        yield d.wait_ready(["solver"])
    finally:
        d.cleanup()


def test_matvec_and_solve_through_the_actor_match_scipy(solver_deployment):
    s = matrices.generate("convection2d", 900, seed=3)
    rng = np.random.default_rng(0)
    x, b = rng.standard_normal(s.shape[0]), rng.standard_normal(s.shape[0])
    with solver_deployment.client() as c:
        rep = c.register_matrix(s, id="grid")
        assert rep.n == s.shape[0] and rep.bandwidth_after <= rep.bandwidth_before
        y = c.matvec("grid", x)
        assert np.allclose(y, s @ x, rtol=1e-12, atol=1e-12 * np.abs(s @ x).max())
        out = c.solve("grid", b, alpha=0.5, tol=1e-10, history=True)
        ref = spla.spsolve(sp.csc_matrix(0.5 * sp.eye(s.shape[0]) + s), b)
        assert out.converged and np.linalg.norm(out.x - ref) <= 1e-8 * np.linalg.norm(ref)
        assert len(out.history) == out.iterations
        assert c.call("solver", "describe", id="grid").nnz == s.nnz
        assert c.drop_matrix("grid") is True
        with pytest.raises(NotFound, match="grid"):
            c.matvec("grid", x)


def test_a_matrix_belongs_to_its_client_unless_registered_as_shared(solver_deployment):
    s = matrices.generate("convection2d", 400, seed=5)
    x = np.ones(s.shape[0])
    with solver_deployment.client() as a, solver_deployment.client() as b:
        a.register_matrix(s, id="mine")
        for call in (
            lambda: b.matvec("mine", x),
            lambda: b.call("solver", "describe", id="mine"),
            lambda: b.solve("mine", x),
        ):
            with pytest.raises(NotFound) as info:  # as if it did not exist
                call()
            assert "mine" not in str(info.value).split("yours and shared")[1]
        assert b.drop_matrix("mine") is False
        assert "mine" not in [m.id for m in b.call("solver", "list").matrices]
        b.register_matrix(2 * s, id="mine")  # b's own "mine": another matrix
        assert np.allclose(b.matvec("mine", x), 2 * (s @ x)) and np.allclose(a.matvec("mine", x), s @ x)
        a.register_matrix(3 * s, id="common", shared=True)
        assert np.allclose(b.matvec("common", x), 3 * (s @ x))
        assert [m.id for m in b.call("solver", "list").matrices] == ["mine", "common"]
        for client in (a, b):
            assert client.drop_matrix("mine") is True
        assert b.drop_matrix("common") is True


def test_matrix_market_bytes_register_like_csr_arrays(solver_deployment):
    s = matrices.generate("saddle", 200, seed=1)
    buf = io.BytesIO()
    scipy.io.mmwrite(buf, sp.coo_array(s), symmetry="skew-symmetric")
    x = np.arange(s.shape[0], dtype=float)
    with solver_deployment.client() as c:
        rep = c.register_matrix(mtx=buf.getvalue())
        assert np.allclose(c.matvec(rep.id, x), s @ x, rtol=1e-12, atol=1e-12)
        c.drop_matrix(rep.id)


def test_bad_matrices_get_typed_errors_and_the_actor_keeps_serving(solver_deployment):
    a = sp.random(50, 50, density=0.1, random_state=0, format="csr")
    with solver_deployment.client() as c:
        with pytest.raises(InvalidInput, match="skew"):
            c.register_matrix(a)  # not skew-symmetric
        nan = matrices.generate("random", 50, seed=2).tocsr()
        nan.data[0] = np.nan
        with pytest.raises(InvalidInput):
            c.register_matrix(nan)
        with pytest.raises(InvalidInput, match="Matrix Market"):
            c.register_matrix(mtx=b"%%MatrixMarket nonsense")
        with pytest.raises(InvalidInput, match="indptr"):
            c.call(
                "solver",
                "register",
                n=3,
                indptr=np.array([0, 5, 1, 2]),
                indices=np.zeros(2, np.int32),
                data=np.zeros(2),
            )
        with pytest.raises(BadRequest):
            c.call("solver", "matvec", id="x", x=[1, 2, 3])  # not an array
        rep = c.register_matrix(matrices.generate("random", 60, seed=4))
        with pytest.raises(InvalidInput):
            c.matvec(rep.id, np.ones(7))  # wrong length
        with pytest.raises(OverBudget, match="limit"):
            c.register_matrix(matrices.generate("convection2d", 640_000, seed=0, scrambled=False))
        assert c.matvec(rep.id, np.ones(60)).shape == (60,)


def test_matrix_store_refuses_duplicate_ids_and_unknown_kinds():
    store = MatrixStore(threads=1)
    s = matrices.generate("random", 30, seed=0).tocsr()
    req = RegisterMatrix(id="a", n=30, indptr=s.indptr, indices=s.indices, data=s.data)
    store.register(req)
    with pytest.raises(InvalidInput, match="already registered"):
        store.register(req)
    with pytest.raises(InvalidInput, match="kind"):
        store.register(RegisterMatrix(id="b", kind="hermitian", mtx=b""))


def test_a_full_matrix_store_still_answers_a_taken_id_as_taken():
    # A client that re-registers after a lost reply treats "already registered" as success;
    # a full store must say that, not OverBudget (the 64-client load run found this).
    store = MatrixStore(threads=1, max_matrices=2)
    s = matrices.generate("random", 30, seed=0).tocsr()
    for mid in ("a", "b"):
        store.register(RegisterMatrix(id=mid, n=30, indptr=s.indptr, indices=s.indices, data=s.data))
    with pytest.raises(InvalidInput, match="already registered"):
        store.register(RegisterMatrix(id="a", n=30, indptr=s.indptr, indices=s.indices, data=s.data))
    with pytest.raises(OverBudget, match="limits 2"):
        store.register(RegisterMatrix(id="c", n=30, indptr=s.indptr, indices=s.indices, data=s.data))


def test_a_full_store_reclaims_idle_private_matrices_least_recently_used_first():
    # A private matrix outlives its client's connection and nobody else can drop it.
    s = matrices.generate("random", 30, seed=0).tocsr()

    def req(mid: str, shared: bool = False) -> RegisterMatrix:
        return RegisterMatrix(id=mid, n=30, indptr=s.indptr, indices=s.indices, data=s.data, shared=shared)

    store = MatrixStore(threads=1, max_matrices=2, reclaim_idle_s=3600)
    store.register(req("a"), b"gone")
    store.register(req("b"), b"gone")
    with pytest.raises(OverBudget, match="idle for 3600 s"):  # nothing idle long enough
        store.register(req("c"), b"new")
    assert store.visible(b"gone") == ["a", "b"]
    store.reclaim_idle_s = 0.0
    store.matvec("a", np.ones(30), b"gone")  # "b" is now the least recent
    store.register(req("c"), b"new")
    assert store.visible(b"gone") == ["a"] and store.visible(b"new") == ["c"] and store.reclaimed == 1
    with pytest.raises(NotFound):
        store.matvec("b", np.ones(30), b"gone")
    shared = MatrixStore(threads=1, max_matrices=1, reclaim_idle_s=0.0)
    shared.register(req("s", shared=True), b"someone")
    with pytest.raises(OverBudget):  # shared ones are never reclaimed
        shared.register(req("t"), b"other")
    assert shared.visible(b"other") == ["s"]


def test_solve_cli_prints_iterations_and_residual(solver_deployment, tmp_path):
    path = tmp_path / "m.mtx"
    matrices.write_mtx(path, matrices.generate("convection2d", 400, seed=5))
    out = subprocess.run(
        [sys.executable, "-m", "specmemo.deploy.cli", "solve", str(path), "--alpha", "0.5"],
        env=solver_deployment.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "converged in" in out.stdout and "residual" in out.stdout


BUDGET_CONFIG = """
[deployment]
name = "{name}"
heartbeat_s = 0.5
heartbeat_misses = 20
restart_intensity = 10

[actors.memory]
kind = "memory"
[actors.memory.config]
budget_mb = 4

[actors.solver]
kind = "solver"
after = ["memory"]
[actors.solver.config]
threads = 1
memory = "memory"
"""


def test_plans_take_their_bytes_from_the_memory_actors_budget(start_deployment):
    import os
    import signal
    import time

    from specmemo.native.plan import footprint

    d = start_deployment(BUDGET_CONFIG.format(name="budget"), "budget", ["memory", "solver"])
    small = matrices.generate("convection2d", 2500, seed=1)  # ~0.3 MB with its vectors
    big = matrices.generate("convection2d", 40_000, seed=1)  # ~4.5 MB: more than the budget
    with d.client(timeout=60) as c:
        c.register_matrix(small, id="small")
        u = c.usage()
        held = footprint(small.shape[0], small.nnz)
        assert u.reserved == {"solver": held} and u.live == held
        with pytest.raises(OverBudget, match="solver needs"):
            c.register_matrix(big, id="big")
        assert c.usage().reserved == {"solver": held}  # nothing built, nothing held
        assert [m.id for m in c.call("solver", "list").matrices] == ["small"]
        x = np.ones(small.shape[0])
        assert np.allclose(c.matvec("small", x), small @ x)
        memory = next(a.pid for a in c.actors() if a.name == "memory")
        os.kill(memory, signal.SIGKILL)  # a new memory actor starts empty ...
        deadline = time.monotonic() + 30
        while True:
            try:
                if c.usage().reserved == {"solver": held}:  # ... and the solver holds its plan again
                    break
            except Exception:
                pass
            assert time.monotonic() < deadline, "the solver did not reserve its plans again"
            time.sleep(0.2)
        assert c.drop_matrix("small") is True
        assert c.usage().reserved == {} and c.usage().live == 0
        c.register_matrix(small, id="again")
        solver = next(a.pid for a in c.actors() if a.name == "solver")
        os.kill(solver, signal.SIGKILL)  # its plans die with it: bytes back
        deadline = time.monotonic() + 30
        while c.usage().reserved:
            assert time.monotonic() < deadline, c.usage()
            time.sleep(0.2)
