"""MRS for (alpha I + S) x = b against scipy's direct solver and GMRES."""

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as sla
from hypothesis import given, settings
from hypothesis import strategies as st

from specmemo.native import InvalidOperand, Plan, matrices
from specmemo.native.solver import SolveResult, mrs, solve, solve_file


@settings(max_examples=25, deadline=None)
@given(
    family=st.sampled_from(sorted(matrices.FAMILIES)),
    size=st.integers(1, 200),
    alpha=st.floats(0.05, 10.0),
    sign=st.sampled_from([1.0, -1.0]),
    threads=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_mrs_matches_spsolve_on_small_systems(family, size, alpha, sign, threads, seed):
    a = matrices.generate(family, size, seed)
    n = a.shape[0]
    b = np.random.default_rng(seed).standard_normal(n)
    result = solve(a, b, sign * alpha, tol=1e-12, threads=threads)
    exact = sla.spsolve(sp.csc_array(sign * alpha * sp.eye_array(n) + a), b)
    assert result.converged
    assert result.residual <= 1e-11
    # ||(alpha I + S)^-1|| <= 1/|alpha| because S is skew: the error is at most residual/|alpha|
    assert np.linalg.norm(result.x - exact) <= 1e-11 * np.linalg.norm(b) / alpha + 1e-14
    # at most n steps in exact arithmetic; rounding (lost orthogonality) adds more the worse the
    # conditioning: Hypothesis found 397 steps for n = 189 ('outliers', alpha = 1/16)
    assert result.iterations <= 3 * n + 10


@settings(max_examples=15, deadline=None)
@given(
    family=st.sampled_from(sorted(matrices.FAMILIES)),
    size=st.integers(1, 300),
    alphas=st.lists(st.floats(0.05, 10.0), min_size=2, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_solves_on_one_plan_reuse_its_vectors_and_equal_solves_on_fresh_plans(family, size, alphas, seed):
    """A plan keeps MRS's vectors between solves; each solve starts from zeroed ones, so the
    k-th solve on a plan is bit for bit the same solve on a plan of its own."""
    a = matrices.generate(family, size, seed)
    n = a.shape[0]
    rng = np.random.default_rng(seed)
    plan = Plan.build(a, threads=2)
    for alpha in alphas:
        b = rng.standard_normal(n) * 10 ** rng.uniform(-3, 3)
        again = mrs(plan, b, alpha, tol=1e-11, maxiter=4 * n + 20)
        fresh = mrs(Plan.build(a, threads=2), b, alpha, tol=1e-11, maxiter=4 * n + 20)
        assert np.array_equal(again.x, fresh.x) and again.history == fresh.history
        exact = sla.spsolve(sp.csc_array(alpha * sp.eye_array(n) + a), b)
        assert np.linalg.norm(again.x - exact) <= 1e-10 * np.linalg.norm(b) / alpha + 1e-14
    with plan.workspace.zeroed() as held:  # a solve that finds them taken works in fresh ones
        held[0][:] = np.nan
        b = rng.standard_normal(n)
        assert np.array_equal(mrs(plan, b, 1.0, tol=1e-11).x, mrs(Plan.build(a, threads=2), b, 1.0, tol=1e-11).x)


def test_residual_history_falls_monotonically_and_matches_the_true_residual():
    a = matrices.generate("convection2d", 900, seed=4)
    b = np.random.default_rng(0).standard_normal(a.shape[0])
    result = solve(a, b, 0.1, tol=1e-10, threads=2)
    history = np.array(result.history)
    assert result.converged and len(history) == result.iterations
    assert np.all(np.diff(history) <= 1e-12)
    true = np.linalg.norm(b - (0.1 * result.x + a @ result.x)) / np.linalg.norm(b)
    assert true == pytest.approx(result.residual, rel=1e-6)
    assert history[-1] <= 1e-10


def test_mrs_needs_about_as_many_products_as_full_gmres():
    # MRS is optimal over the same Krylov space as unrestarted GMRES, with short recurrences
    a = matrices.generate("convection2d", 400, seed=2)
    n = a.shape[0]
    b = np.random.default_rng(1).standard_normal(n)
    result = solve(a, b, 0.5, tol=1e-10, threads=1)
    products = []
    op = sla.LinearOperator((n, n), matvec=lambda x: (products.append(1), 0.5 * x + a @ x)[1], dtype=float)
    x, info = sla.gmres(op, b, rtol=1e-10, atol=0.0, restart=n, maxiter=n)
    assert info == 0 and result.converged
    assert abs(result.iterations - len(products)) <= 0.1 * len(products) + 2


def test_running_out_of_iterations_is_reported_not_raised():
    a = matrices.generate("convection2d", 400, seed=2)
    result = solve(a, np.ones(400), 0.01, tol=1e-12, maxiter=5)
    assert isinstance(result, SolveResult)
    assert not result.converged and result.iterations == 5
    assert 0 < result.residual < 1


def test_zero_right_hand_side_gives_zero_without_iterating():
    result = solve(matrices.generate("random", 30, seed=1), np.zeros(30), 1.0)
    assert result.converged and result.iterations == 0 and not result.x.any()


def test_singular_skew_system_with_zero_shift_does_not_crash():
    # a skew matrix of odd order is singular; a consistent b is still solved
    a = matrices.generate("random", 51, seed=2)
    plan = Plan.build(a, threads=1)
    result = mrs(plan, plan.matvec(np.ones(51)), 0.0, tol=1e-10, maxiter=500)
    assert result.converged and result.residual <= 1e-9
    inconsistent = mrs(plan, np.ones(51), 0.0, tol=1e-10, maxiter=100)
    assert np.all(np.isfinite(inconsistent.history))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(alpha=float("nan")), "alpha must be finite"),
        (dict(alpha="1"), "alpha must be a real number"),
        (dict(b=np.ones(7)), r"b must have shape \(30,\)"),
        (dict(b=np.full(30, np.inf)), "b has non-finite"),
        (dict(tol=-1.0), "tol must be >= 0"),
        (dict(maxiter=-1), "maxiter must be an integer >= 0"),
    ],
)
def test_bad_solver_arguments_are_refused(change, message):
    plan = Plan.build(matrices.generate("random", 30, seed=1), threads=1)
    args = dict(b=np.ones(30), alpha=1.0, tol=1e-10, maxiter=None) | change
    with pytest.raises(InvalidOperand, match=message):
        mrs(plan, **args)


def test_symmetric_plans_are_refused_by_mrs():
    plan = Plan.build(sp.eye_array(4), kind="symmetric", threads=1)
    with pytest.raises(InvalidOperand, match="symmetric"):
        mrs(plan, np.ones(4), 1.0)


def test_solve_file_solves_a_generated_matrix_market_file(tmp_path):
    path = tmp_path / "grid.mtx"
    matrices.write_mtx(path, matrices.generate("convection2d", 2500, seed=7))
    result = solve_file(path, alpha=0.5, tol=1e-10, threads=2)
    assert result.converged and result.residual <= 1e-10
    assert np.abs(result.x - 1.0).max() < 1e-8
    assert set(result.summary()) == {"converged", "iterations", "residual", "seconds", "alpha", "tol"}
