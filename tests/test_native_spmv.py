"""Every C kernel against scipy's `S @ x`, on random matrices of every family.

The bound is elementwise and relative: |y - S x| <= 1e-12 (|S| |x|), so a row whose terms
cancel is held to the size of its terms, and a row with no terms must come out exactly 0.
"""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specmemo.native import VERSION, Plan, matrices, max_threads
from specmemo.native import spmv as K
from specmemo.native.errors import InvalidOperand
from specmemo.native.split import split_band

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RTOL = 1e-12


def assert_matches(y, a, x, alpha=0.0, u=None):
    ref = a @ x
    scale = abs(a) @ np.abs(x)
    if u is not None:
        ref = ref + alpha * u
        scale = scale + abs(alpha) * np.abs(u)
    assert y.shape == ref.shape
    err = np.abs(y - ref)
    assert np.all(err <= RTOL * scale), f"max error {err.max()} against scale {scale.max()}"


def single_nonzero(n: int, i: int, j: int, value: float) -> sp.csr_array:
    lower = sp.csr_array(([value], ([max(i, j)], [min(i, j)])), shape=(n, n))
    return sp.csr_array(lower - lower.T)


@st.composite
def skew_matrices(draw):
    """Skew-symmetric matrices from every family, n from 1 to a few thousand, any bandwidth."""
    seed = draw(st.integers(0, 2**16))
    family = draw(st.sampled_from(["band", "convection2d", "convection3d", "random", "saddle", "single", "zero"]))
    if family == "band":
        n = draw(st.one_of(st.integers(1, 60), st.integers(61, 3000)))
        band = draw(st.integers(0, n - 1))
        density = draw(st.floats(0.05, 1.0))
        a = matrices.band_with_outliers(n, band, density, draw(st.integers(0, 6)), seed)
    elif family == "convection2d":
        a = matrices.convection_2d(draw(st.integers(1, 40)), draw(st.integers(1, 40)), draw(st.floats(-2, 2)), 1.5)
    elif family == "convection3d":
        a = matrices.convection_3d(*(draw(st.integers(1, 9)) for _ in range(3)))
    elif family == "random":
        n = draw(st.integers(1, 300))
        a = matrices.random_skew(n, draw(st.floats(0.0, 0.3)), seed)
    elif family == "saddle":
        a = matrices.saddle(draw(st.integers(1, 80)), draw(st.integers(1, 80)), draw(st.floats(0.0, 0.3)), seed)
    elif family == "single":
        n = draw(st.integers(2, 200))
        i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))
        a = single_nonzero(n, i, j if j != i else (i + 1) % n, draw(st.floats(-10, 10).filter(bool)))
    else:
        a = sp.csr_array((draw(st.integers(1, 50)),) * 2)
    if draw(st.booleans()):
        a = matrices.scramble(a, seed)
    return sp.csr_array(a)


def symmetric_twin(a: sp.csr_array, seed: int) -> sp.csr_array:
    """L + D + L^T from the strict lower triangle of a, with a random diagonal."""
    lower = sp.tril(a, k=-1)
    diag = np.random.default_rng(seed).standard_normal(a.shape[0])
    return sp.csr_array(lower + lower.T + sp.diags_array(diag))


def test_library_loads_and_reports_its_version():
    assert VERSION == K.lib.PARS3_VERSION == 4
    assert max_threads() >= 1


@FAST
@given(a=skew_matrices(), threads=st.integers(1, 8), reorder=st.booleans(), seed=st.integers(0, 2**16))
def test_banded_kernel_equals_scipy(a, threads, reorder, seed):
    x = np.random.default_rng(seed).standard_normal(a.shape[0])
    plan = Plan.build(a, threads=threads, reorder=reorder, compact=False)
    assert_matches(plan.matvec(x), a, x)


@FAST
@given(
    a=skew_matrices(),
    threads=st.integers(1, 8),
    far_cost=st.one_of(st.floats(0.0, 20.0), st.just(1e12)),
    alpha=st.floats(-5, 5),
    seed=st.integers(0, 2**16),
)
def test_banded_kernel_with_any_window_split_equals_scipy(a, threads, far_cost, alpha, seed):
    # far_cost near 0 leaves entries in the outer part; 1e12 puts every outlier in a window,
    # so a block with an outlier reaches back further than its neighbours (windows not monotone)
    plan = Plan.build(a, threads=threads, compact=False)
    split = split_band(plan.half, threads, far_cost=far_cost)
    b = a[plan.perm][:, plan.perm]
    rng = np.random.default_rng(seed)
    x, u = rng.standard_normal(a.shape[0]), rng.standard_normal(a.shape[0])
    y = K.band_spmv(plan.half, split, x, np.full(a.shape[0], np.nan), np.full(split.work_size, np.nan), alpha, u)
    assert_matches(y, b, x, alpha, u)
    assert split.middle_count + split.outer_count <= plan.half.nnz


@FAST
@given(a=skew_matrices(), threads=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_serial_and_colouring_kernels_equal_scipy(a, threads, seed):
    n = a.shape[0]
    x = np.random.default_rng(seed).standard_normal(n)
    plan = Plan.build(a, threads=threads, compact=False)
    b = sp.csr_array(a[plan.perm][:, plan.perm])
    full = K.CsrMatrix.from_scipy(b)
    assert_matches(K.csr_spmv(full, x, np.full(n, np.nan)), b, x)
    assert_matches(K.half_spmv(plan.half, x, np.full(n, np.nan)), b, x)
    colouring = K.Colouring.of(plan.half)
    assert_matches(K.colour_spmv(plan.half, colouring, x, np.full(n, np.nan), threads), b, x)


@FAST
@given(a=skew_matrices(), threads=st.integers(1, 8), seed=st.integers(0, 2**16), far_cost=st.floats(0.0, 20.0))
def test_symmetric_twin_kernels_equal_scipy(a, threads, seed, far_cost):
    s = symmetric_twin(a, seed)
    n = s.shape[0]
    x = np.random.default_rng(seed + 1).standard_normal(n)
    plan = Plan.build(s, kind="symmetric", threads=threads, compact=False)
    assert_matches(plan.matvec(x), s, x)
    b = sp.csr_array(s[plan.perm][:, plan.perm])
    assert_matches(K.half_spmv(plan.half, x, np.full(n, np.nan)), b, x)
    split = split_band(plan.half, threads, far_cost=far_cost)
    assert_matches(K.band_spmv(plan.half, split, x, np.empty(n), np.empty(split.work_size)), b, x)
    assert_matches(K.colour_spmv(plan.half, K.Colouring.of(plan.half), x, np.empty(n), threads), b, x)


@FAST
@given(a=skew_matrices(), alpha=st.floats(-100, 100), threads=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_fused_shifted_product_equals_alpha_x_plus_sx(a, alpha, threads, seed):
    x = np.random.default_rng(seed).standard_normal(a.shape[0])
    assert_matches(Plan.build(a, threads=threads, compact=False).shifted(alpha, x), a, x, alpha, x)


def test_colouring_gives_no_two_rows_of_a_colour_a_shared_target():
    a = matrices.generate("random", 400, seed=5)
    half = Plan.build(a, threads=2, compact=False).half
    colouring = K.Colouring.of(half)
    assert sorted(colouring.rows.tolist()) == list(range(half.n))
    for c in range(colouring.colours):
        rows = colouring.rows[colouring.colour_off[c] : colouring.colour_off[c + 1]]
        touched = np.concatenate([np.concatenate(([r], half.col[half.rowptr[r] : half.rowptr[r + 1]])) for r in rows])
        assert len(np.unique(touched)) == len(touched)


def test_outliers_beyond_the_band_go_to_the_outer_part():
    # a tridiagonal band plus entries far below it: the windows stay short
    n = 2000
    a = matrices.band_with_outliers(n, 1, 1.0, 0, seed=1)
    far = sp.csr_array(([1.0, 2.0, 3.0], ([1999, 1500, 1800], [3, 10, 700])), shape=(n, n))
    a = sp.csr_array(a + far - far.T)
    plan = Plan.build(a, threads=4, reorder=False, compact=False)
    report = plan.describe()
    assert report.share_outer == pytest.approx(3 / plan.half.nnz)
    assert report.window_rows <= 3 * 1
    assert report.bandwidth_after == 1996
    x = np.random.default_rng(0).standard_normal(n)
    assert_matches(plan.matvec(x), a, x)


def test_reduction_visits_every_later_window_when_windows_are_not_monotone():
    # three blocks of four rows; block 1 reaches nowhere, block 2 reaches back into block 0:
    # the owner of block 0 must not stop at block 1's empty window
    lower = sp.csr_array(([1.0, 2.0, 3.0, 4.0], ([2, 5, 9, 10], [0, 4, 1, 9])), shape=(12, 12))
    a = sp.csr_array(lower - lower.T)
    plan = Plan.build(a, threads=3, reorder=False, compact=False)
    split = split_band(plan.half, 3, far_cost=1e12)
    assert split.row_start.tolist() == [0, 4, 8, 12]
    assert split.win_start.tolist() == [0, 4, 1]
    x = np.arange(1.0, 13.0)
    assert_matches(K.band_spmv(plan.half, split, x, np.empty(12), np.empty(split.work_size)), a, x)


def test_more_threads_than_rows_leaves_blocks_empty_and_still_matches():
    a = single_nonzero(3, 2, 0, 4.0)
    plan = Plan.build(a, threads=8, compact=False)
    assert np.sum(np.diff(plan.split.row_start) == 0) >= 5
    x = np.array([1.0, 2.0, 3.0])
    assert_matches(plan.matvec(x), a, x)


def test_fewer_threads_than_blocks_share_the_blocks_out():
    a = matrices.generate("outliers", 3000, seed=4)
    plan = Plan.build(a, threads=6, compact=False)
    x = np.random.default_rng(2).standard_normal(3000)
    b = sp.csr_array(a[plan.perm][:, plan.perm])
    for threads in (1, 2, 4, 7):
        assert_matches(plan.apply(x, np.empty(3000), threads=threads), b, x)


def test_triad_computes_b_plus_s_c():
    rng = np.random.default_rng(0)
    b, c = rng.standard_normal(10001), rng.standard_normal(10001)
    for threads in (1, 2, 3):
        a = K.triad(np.empty_like(b), b, c, 0.5, threads)
        assert np.array_equal(a, b + 0.5 * c)


def test_mrs_update_fuses_the_two_vector_updates():
    rng = np.random.default_rng(3)
    v, d1, d2, x = (rng.standard_normal(5001) for _ in range(4))
    want_d = (0.25 * v - 0.3 * d1 - (-1.2) * d2) / 0.7
    want_x = x + 2.5 * want_d
    K.mrs_update(0.3, -1.2, 0.7, 2.5, 0.25, v, d1, d2, x, threads=2)
    assert np.allclose(d2, want_d, rtol=1e-13, atol=1e-15) and np.allclose(x, want_x, rtol=1e-13, atol=1e-15)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(sorted(matrices.FAMILIES)),
    st.integers(2, 400),
    st.integers(0, 3),
    st.integers(1, 4),
    st.booleans(),
    st.sampled_from(["float64", "float32"]),
    st.sampled_from(["skew", "symmetric"]),
    st.sampled_from([None, 1, 3, 256, 257]),
)
def test_compact_storage_gives_the_products_of_the_matrix_it_stores(
    family, size, seed, threads, compact, precision, kind, levels
):
    a = matrices.generate(family, size, seed=seed)
    if levels is not None:  # values from a few levels (a stencil's coefficients), or just too many
        lower = sp.tril(a, k=-1).tocsr()
        table = np.random.default_rng(seed).standard_normal(levels)
        lower.data = table[np.arange(lower.nnz) % levels]
        a = sp.csr_array(lower - lower.T)
    if kind == "symmetric":
        a = sp.csr_array(abs(a) + sp.diags_array(np.arange(a.shape[0], dtype=float)))
    plan = Plan.build(a, kind, threads=threads, compact=compact, precision=precision)
    report = plan.describe()
    stored = sp.tril(sp.csr_array(a[plan.perm][:, plan.perm]), k=-1).data  # what the band holds
    if precision == "float32":
        stored = stored.astype(np.float32).astype(np.float64)
    distinct = len(np.unique(stored.view(np.int64)))
    coded = compact and 0 < distinct <= 256
    assert report.index_bytes == (2 if compact else 4)
    assert report.value_bytes == (1 if coded else 4 if precision == "float32" else 8)
    x = np.random.default_rng(seed).standard_normal(a.shape[0])
    if precision == "float32":  # exactly the product of the rounded matrix; near the original
        rounded = a.copy()  # (not sharing a's index arrays: scipy may sort them in place)
        rounded.data = rounded.data.astype(np.float32).astype(np.float64)
        assert_matches(plan.matvec(x), rounded, x)
        want = a @ x
        assert np.linalg.norm(plan.matvec(x) - want) <= 1e-6 * np.linalg.norm(abs(a) @ abs(x))
    else:
        assert_matches(plan.matvec(x), a, x)
    # a scaled product is the product of the scaled vector, and the shift is added after it
    u = np.random.default_rng(seed + 1).standard_normal(a.shape[0])
    xp, up = plan.permute(x), plan.permute(u)
    y = plan.unpermute(plan.apply(xp, np.empty(plan.n), 0.7, up, scale=-2.5))
    assert_matches(y, rounded if precision == "float32" else a, -2.5 * x, 0.7, u)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 1e-300, 3.0, float("inf")]), max_size=300),
    st.integers(0, 400),
    st.integers(0, 2**31 - 1),
)
def test_value_codes_name_every_value_bit_for_bit(values, extra, seed):
    """The table is of bit patterns (so -0.0 keeps its sign), codes cover values the sample at the
    front did not see, and more than 256 distinct values give no codes."""
    rng = np.random.default_rng(seed)
    head = np.array(values, dtype=np.float64)
    tail = rng.standard_normal(extra) if extra else np.zeros(0)
    val = np.concatenate([np.repeat(head, 300), tail])  # the tail lies past the 65,536-entry sample
    codes, table = K.value_codes(val)
    distinct = len(np.unique(val.view(np.int64)))
    if 0 < distinct <= K.MAX_CODES:
        assert codes is not None and table is not None and codes.dtype == np.uint8
        assert np.array_equal(table[codes].view(np.int64), val.view(np.int64))
    else:
        assert codes is None and table is None


def test_rows_longer_than_255_entries_keep_64_bit_row_offsets():
    n = 600
    lower = sp.lil_array((n, n))
    lower[n - 1, : n - 1] = np.arange(1, n)  # one row of 599 entries, within 16 bits of its row
    lower[5, 2] = 0.5
    a = sp.csr_array(lower - lower.T)
    plan = Plan.build(a, threads=2, reorder=False)
    assert plan.half.off is not None and plan.half.rlen is None
    x = np.random.default_rng(0).standard_normal(n)
    assert_matches(plan.matvec(x), a, x)
    short = Plan.build(matrices.generate("convection2d", 400, seed=0), threads=2)
    assert short.half.rlen is not None and short.describe().value_bytes == 1


def test_a_band_wider_than_16_bits_keeps_32_bit_columns():
    n = 70_000
    a = sp.csr_array(([1.0, -1.0, 2.0, -2.0], ([n - 1, 0, 1, 0], [0, n - 1, 0, 1])), shape=(n, n))
    plan = Plan.build(a, threads=1, reorder=False)
    assert plan.describe().index_bytes == 4 and plan.describe().bandwidth_after == n - 1
    x = np.random.default_rng(0).standard_normal(n)
    assert_matches(plan.matvec(x), a, x)
    narrow = Plan.build(matrices.generate("convection2d", 400, seed=0), threads=2)
    assert narrow.describe().index_bytes == 2
    with pytest.raises(InvalidOperand, match="compact"):
        K.half_spmv(narrow.half, np.ones(narrow.n), np.empty(narrow.n))


@FAST
@given(st.integers(0, 5000), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_the_dot_kernel_equals_numpy(n, threads, seed):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal(n), rng.standard_normal(n)
    assert abs(K.dot(x, y, threads) - float(np.dot(x, y))) <= 1e-12 * max(1.0, float(np.abs(x) @ np.abs(y)))
    with pytest.raises(InvalidOperand):
        K.dot(x, np.ones(n + 1), threads)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 3000), threads=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_the_parallel_permutation_equals_numpy_indexing_both_ways(n, threads, seed):
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n).astype(np.int64)
    x = rng.standard_normal(n)
    gathered = K.permuted(perm, x, threads)
    assert np.array_equal(gathered, x[perm])
    back = K.permuted(perm, gathered, threads, inverse=True)
    assert np.array_equal(back, x)


def test_the_permutation_refuses_a_perm_of_another_dtype_and_a_vector_of_another_length():
    perm = np.arange(5, dtype=np.int64)
    with pytest.raises(InvalidOperand, match="int64"):
        K.permuted(perm.astype(np.int32), np.zeros(5), 1)
    with pytest.raises(InvalidOperand):
        K.permuted(perm, np.zeros(4), 1)
    with pytest.raises(InvalidOperand):
        K.permuted(perm, np.zeros(5), 0)


def brute_force_uniform(half) -> np.ndarray:
    """The uniform-group flags from their definition (pars3.h), one group at a time."""
    lengths = np.diff(half.rowptr)
    distance = half.row_of_entries() - half.columns()
    flags = []
    for g in range(half.n // K.GROUP):
        rows = range(g * K.GROUP, (g + 1) * K.GROUP)
        slots = {int(lengths[i]) for i in rows}
        ok = len(slots) == 1 and slots.pop() <= K.GROUP_SLOTS
        if ok:
            pattern = [tuple(distance[half.rowptr[i] : half.rowptr[i + 1]]) for i in rows]
            ok = len(set(pattern)) == 1
        flags.append(int(ok))
    return np.array(flags, dtype=np.uint8)


@FAST
@given(st.sampled_from(sorted(matrices.FAMILIES)), st.integers(2, 600), st.integers(0, 3), st.integers(1, 4))
def test_uniform_row_groups_are_found_and_run_as_vectors_with_the_same_products(family, size, seed, threads):
    a = matrices.generate(family, size, seed=seed)
    plan = Plan.build(a, threads=threads)
    half = plan.half
    if half.rlen is None:  # a band wider than 16 bits or a row of more than 255 entries
        assert half.uniform is None
        return
    assert np.array_equal(half.uniform, brute_force_uniform(half))
    x = np.random.default_rng(seed).standard_normal(a.shape[0])
    grouped = plan.matvec(x)
    assert_matches(grouped, a, x)
    scalar = half.compacted()  # the same storage with every group flag off: the row-by-row loop
    scalar.uniform[:] = 0
    xp = plan.permute(x)
    y = plan.unpermute(K.band_spmv(scalar, plan.split, xp, np.empty(plan.n), plan.work()))
    assert_matches(y, a, x)
    assert np.allclose(grouped, y, rtol=0, atol=1e-13 * (abs(a) @ np.abs(x)).max())


def test_a_stencil_interior_is_mostly_uniform_groups():
    plan = Plan.build(matrices.generate("convection2d", 10_000, seed=0, scrambled=False), threads=2, reorder=False)
    assert plan.half.uniform.mean() > 0.85  # all but the groups that hold a grid row's first row
    x = np.random.default_rng(0).standard_normal(plan.n)
    u = np.random.default_rng(1).standard_normal(plan.n)
    y = plan.unpermute(plan.apply(plan.permute(x), np.empty(plan.n), 0.5, plan.permute(u), scale=2.0))
    a = matrices.generate("convection2d", 10_000, seed=0, scrambled=False)
    assert_matches(y, a, 2.0 * x, 0.5, u)


def test_the_portable_path_of_uniform_groups_gives_the_same_products():
    """On a CPU with AVX-512 the coded form's uniform groups run as vectors; PARS3_NO_AVX512 makes
    the library take the portable loop (what an AVX2-only CPU runs), checked here against scipy."""
    import os
    import subprocess
    import sys

    script = (
        "import numpy as np, scipy.sparse as sp\n"
        "from specmemo.native import Plan, matrices\n"
        "for family, seed in (('convection2d', 0), ('convection3d', 1), ('random', 2)):\n"
        "    a = matrices.generate(family, 3000, seed=seed)\n"
        "    plan = Plan.build(a, threads=2)\n"
        "    x = np.random.default_rng(seed).standard_normal(a.shape[0])\n"
        "    err = np.abs(plan.matvec(x) - a @ x) <= 1e-12 * (abs(a) @ np.abs(x))\n"
        "    assert err.all(), family\n"
        "    assert family != 'convection2d' or plan.half.uniform.mean() > 0.5\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PARS3_NO_AVX512="1")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
