"""The plan: matrix checks, reordering, the report, and refusing bad input before any C call."""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from specmemo.native import (
    InvalidMatrix,
    InvalidOperand,
    NotSkewSymmetric,
    NotSymmetric,
    Plan,
    matrices,
    split,
    spmv,
    validate,
)


@pytest.fixture
def skew():
    return matrices.generate("convection2d", 400, seed=3)


@pytest.fixture
def no_c(monkeypatch):
    """Any use of the C library fails the test: bad input must be refused before C."""

    class Forbidden:
        def __getattr__(self, name):
            raise AssertionError(f"C was called: {name}")

    monkeypatch.setattr(spmv, "lib", Forbidden())


def test_rcm_shrinks_the_bandwidth_of_a_scrambled_grid(skew):
    report = Plan.build(skew, threads=2).describe()
    assert report.n == 400 and report.nnz == skew.nnz and report.nnz_stored == skew.nnz // 2
    assert report.bandwidth_before > 300
    assert report.bandwidth_after <= 40
    assert report.share_inner + report.share_middle + report.share_outer == pytest.approx(1.0)
    assert report.window_rows <= 2 * report.bandwidth_after


def test_report_is_plain_numbers_for_the_wire(skew):
    d = Plan.build(skew, threads=3).describe().as_dict()
    assert d["kind"] == "skew" and d["threads"] == 3
    assert all(isinstance(v, (int, float, str)) for v in d.values())


def test_rows_are_split_by_nonzeros_not_by_count():
    # the first 100 rows are dense, the last 900 nearly empty: block 0 must be short, and the
    # blocks carry about equal modelled traffic, 12 bytes per stored nonzero and 28 per row
    dense = sp.random_array((100, 100), density=0.9, rng=np.random.default_rng(0))
    a = sp.block_diag([dense - dense.T, matrices.band_with_outliers(900, 1, 1.0, 0, seed=0)], format="csr")
    plan = Plan.build(a, threads=2, reorder=False)
    starts, rowptr = plan.split.row_start, plan.half.rowptr
    assert starts[1] < 100
    traffic = [12 * (rowptr[e] - rowptr[s]) + 28 * (e - s) for s, e in zip(starts, starts[1:])]
    assert abs(traffic[0] - traffic[1]) < 0.02 * sum(traffic)


def test_for_threads_resplits_without_reordering_again(skew):
    plan = Plan.build(skew, threads=1)
    four = plan.for_threads(4)
    assert four.split.blocks == 4 and four.describe().threads == 4
    assert four.perm is plan.perm and four.half is plan.half
    x = np.random.default_rng(0).standard_normal(400)
    assert np.allclose(four.matvec(x), plan.matvec(x), rtol=0, atol=1e-13)


def test_non_skew_matrix_is_refused_naming_the_worst_entry(no_c):
    a = sp.lil_array((5, 5))
    a[3, 1], a[1, 3] = 2.0, -1.5
    a[4, 0], a[0, 4] = 1.0, -1.0
    with pytest.raises(NotSkewSymmetric, match=r"A\[3,1\] = 2\.0, A\[1,3\] = -1\.5") as info:
        Plan.build(a)
    assert info.value.offending == [(3, 1, 2.0, -1.5)]
    assert isinstance(info.value, ValueError)


def test_nonzero_diagonal_is_not_skew(no_c):
    with pytest.raises(NotSkewSymmetric, match=r"A\[2,2\]"):
        Plan.build(sp.diags_array([0.0, 0.0, 1.0]))


def test_skew_within_tolerance_is_accepted_and_beyond_it_refused():
    a = sp.csr_array(np.array([[0.0, 1.0], [-1.0 - 1e-14, 0.0]]))
    Plan.build(a, tol=1e-12, threads=1)
    with pytest.raises(NotSkewSymmetric):
        Plan.build(a, tol=1e-16)


def test_asymmetric_matrix_is_refused_as_symmetric(no_c):
    with pytest.raises(NotSymmetric, match=r"A\[1,0\] = 3\.0, A\[0,1\] = 2\.0"):
        Plan.build(sp.csr_array(np.array([[1.0, 2.0], [3.0, 1.0]])), kind="symmetric")


@pytest.mark.parametrize(
    "matrix, message",
    [
        (sp.csr_array((3, 4)), "square"),
        (sp.csr_array((0, 0)), "no rows"),
        (sp.csr_array(np.array([[0, 1j], [-1j, 0]])), "dtype complex128"),
        (np.array([[0.0, np.nan], [np.nan, 0.0]]), r"non-finite entries, the first at \(0, 1\)"),
        (sp.csr_array(np.array([[0.0, np.inf], [-np.inf, 0.0]])), "non-finite"),
        (np.array([["a", "b"], ["c", "d"]]), "dtype"),
        ([[0.0, 1.0], [-1.0, 0.0]], "scipy sparse matrix or a 2-D numpy array"),
    ],
)
def test_bad_matrices_are_refused_before_c(no_c, matrix, message):
    with pytest.raises(InvalidMatrix, match=message):
        Plan.build(matrix, threads=1)


def test_too_many_nonzeros_is_refused_clearly(no_c, monkeypatch, skew):
    monkeypatch.setattr(validate, "MAX_NNZ", skew.nnz - 1)
    with pytest.raises(InvalidMatrix, match=f"{skew.nnz} nonzeros; at most {skew.nnz - 1}"):
        Plan.build(skew)


def test_integer_and_float32_matrices_are_converted():
    a = np.array([[0, 2], [-2, 0]], dtype=np.int16)
    assert np.array_equal(Plan.build(a, threads=1).matvec([1, 1]), [2.0, -2.0])
    b = sp.csr_array(a.astype(np.float32))
    assert np.array_equal(Plan.build(b, threads=1).matvec(np.array([1.0, 0.5])), [1.0, -2.0])


@pytest.mark.parametrize("writable", [True, False])
def test_building_a_plan_never_writes_to_the_callers_arrays(writable):
    # Unsorted columns, a duplicate and an explicit zero: the canonical form differs from
    # the input, and check_matrix must reach it on a copy (the solver actor registers
    # arrays it received, read-only, and in-process callers keep using theirs).
    dense = matrices.generate("random", 40, seed=5).toarray()
    coo = sp.coo_array(dense)
    rows, cols = np.append(coo.row, [0, 1]), np.append(coo.col, [1, 1])
    vals = np.append(coo.data, [0.0, 0.0])  # (0,1) twice (sums to itself), a stored 0 at (1,1)
    a = sp.csr_array((vals, (rows, cols)), shape=dense.shape)
    data, indices, indptr = a.data.copy(), a.indices.copy(), a.indptr.copy()
    for i in range(len(indptr) - 1):  # each row's columns in descending order
        lo, hi = indptr[i], indptr[i + 1]
        order = lo + np.argsort(-indices[lo:hi], kind="stable")
        data[lo:hi], indices[lo:hi] = data[order], indices[order]
    given_arrays = (data.copy(), indices.copy(), indptr.copy())
    m = sp.csr_array((data, indices, indptr), shape=dense.shape)
    assert not m.has_canonical_format
    for arr in (data, indices, indptr):
        arr.setflags(write=writable)
    plan = Plan.build(m, threads=1)
    for before, after in zip(given_arrays, (data, indices, indptr)):
        assert np.array_equal(before, after), "the caller's arrays were written"
    x = np.random.default_rng(1).standard_normal(dense.shape[0])
    assert np.allclose(plan.matvec(x), dense @ x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "x, message",
    [
        (np.ones(399), r"shape \(400,\)"),
        (np.ones((400, 1)), r"shape \(400,\)"),
        (np.ones(400, dtype=complex), "dtype complex128"),
        (np.full(400, np.nan), "non-finite entries, the first at 0"),
        (["a"] * 400, "dtype"),
    ],
)
def test_bad_vectors_are_refused_before_c(skew, monkeypatch, x, message):
    plan = Plan.build(skew, threads=2)
    monkeypatch.setattr(spmv, "lib", None)
    with pytest.raises(InvalidOperand, match=message):
        plan.matvec(x)


def test_low_level_buffers_are_checked_before_c(skew, monkeypatch):
    plan = Plan.build(skew, threads=2)
    n, work = plan.n, plan.work()
    x, y = np.ones(n), np.empty(n)
    frozen = np.empty(n)
    frozen.flags.writeable = False
    monkeypatch.setattr(spmv, "lib", None)
    cases = [
        (dict(x=np.ones(2 * n)[::2]), "C-contiguous"),
        (dict(x=np.ones(n, dtype=np.float32)), "dtype float64"),
        (dict(y=frozen), "writeable"),
        (dict(y=x), "overlap"),
        (dict(work=np.empty(work.size + 1)), "work must have shape"),
        (dict(alpha=float("nan")), "alpha must be finite"),
        (dict(threads=0), r"threads must be in 1\.\."),
        (dict(threads=2.0), "threads must be an integer"),
    ]
    for change, message in cases:
        args = dict(x=x, y=y, work=work, alpha=0.0, threads=None) | change
        with pytest.raises(InvalidOperand, match=message):
            spmv.band_spmv(
                plan.half, plan.split, args["x"], args["y"], args["work"], args["alpha"], threads=args["threads"]
            )


def test_a_split_for_another_matrix_is_refused(skew, monkeypatch):
    plan = Plan.build(skew, threads=2)
    other = Plan.build(matrices.generate("random", 50, seed=1), threads=2)
    monkeypatch.setattr(spmv, "lib", None)
    with pytest.raises(InvalidOperand, match="split covers 50 rows"):
        spmv.band_spmv(plan.half, other.split, np.ones(400), np.empty(400), np.empty(other.split.work_size))


@settings(max_examples=60, deadline=None)
@given(
    distances=st.lists(st.integers(1, 60), max_size=40),
    far_cost=st.floats(0.0, 30.0),
)
def test_window_length_minimises_the_cost_model(distances, far_cost):
    d = np.array(distances, dtype=np.int64)

    def cost(length):
        return length + far_cost * int(np.sum(d > length))

    chosen = split.window_length(d, 1.0, far_cost)
    assert cost(chosen) == pytest.approx(min(cost(length) for length in range(61)))


@pytest.mark.parametrize("family,size", [("convection2d", 40_000), ("convection3d", 27_000), ("random", 5_000)])
def test_the_footprint_covers_what_a_plan_and_a_solve_hold(family, size):
    # the memory actor is asked for footprint(n, nnz) before a plan is built: it must not be less
    # than the arrays the plan and MRS really hold, counted from the objects themselves
    from specmemo.native.plan import footprint

    a = matrices.generate(family, size, seed=1)
    plan = Plan.build(a, threads=2)
    held = sum(
        arr.nbytes
        for arr in (
            plan.half.rowptr,
            plan.half.col,
            plan.half.off,
            plan.half.val,
            plan.half.val32,
            plan.perm,
            plan.work(),
        )
        if arr is not None
    )
    held += sum(
        getattr(plan.split, f).nbytes
        for f in (
            "row_start",
            "win_start",
            "buf_off",
            "head_off",
            "mid_start",
            "inner_start",
            "far_off",
            "far_target",
            "far_source",
            "far_val",
        )
    )
    held += 8 * 8 * a.shape[0]  # MRS: v, v_prev, w, d1, d2, x, b permuted, x unpermuted
    assert held <= footprint(a.shape[0], a.nnz) <= 1.5 * held
