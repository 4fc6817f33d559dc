"""Row-wise attention (native/rows_attention.c) against numpy: the same attention for prefixes,
slot lists and batches; every row alone equals the row in a batch, and every head alone the head
among its KV head's others, bit for bit."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specmemo.native import NativeError, rows_attention


@st.composite
def problems(draw):
    batch, m = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    kv_heads = draw(st.integers(1, 3))
    heads = kv_heads * draw(st.integers(1, 11))
    dim = draw(st.sampled_from([1, 3, 8, 16, 64, 72, 128]))
    keys = draw(st.integers(1, 80))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    size = draw(st.sampled_from([0.1, 1.0, 10.0]))  # large scores: the max subtraction matters
    q = (rng.standard_normal((batch, m, heads, dim)) * size).astype(np.float32)
    k = (rng.standard_normal((batch, kv_heads, keys, dim)) * size).astype(np.float32)
    v = rng.standard_normal((batch, kv_heads, keys, dim)).astype(np.float32)
    trees = draw(st.booleans())
    visible = []
    for _ in range(batch):
        row = []
        for _ in range(m):
            n = draw(st.integers(0 if trees else 1, keys))
            if trees:
                row.append(np.sort(rng.choice(keys, size=n, replace=False)))
            else:
                row.append(n)
        visible.append(row)
    return q, k, v, visible, float(dim**-0.5)


@settings(max_examples=80, deadline=None)
@given(problems())
def test_rows_equal_the_numpy_reference_and_do_not_depend_on_each_other(problem):
    q, k, v, visible, scale = problem
    out = rows_attention.attend(q, k, v, visible, scale, threads=2)
    # float32 scores carry ~1e-7 relative error, so exp(s − max) errs by that times |s|
    group = q.shape[2] // k.shape[1]
    scores = np.einsum("bjhd,bhtd->bjht", q.astype(np.float64), np.repeat(k, group, axis=1).astype(np.float64))
    tolerance = 1e-6 * (1 + np.abs(scores * scale).max()) * np.sqrt(q.shape[-1]) * np.abs(v).max()
    assert np.allclose(out, rows_attention.reference(q, k, v, visible, scale), rtol=1e-5, atol=tolerance)
    batch, m = q.shape[:2]
    for b in range(batch):
        for j in range(m):  # the row alone, in a batch of one
            alone = rows_attention.attend(q[b : b + 1, j : j + 1], k[b : b + 1], v[b : b + 1], [[visible[b][j]]], scale)
            assert np.array_equal(alone[0, 0], out[b, j])
            seen = visible[b][j]
            if isinstance(seen, int):  # a prefix as a count or as its slot list: the same bits
                listed = rows_attention.attend(
                    q[b : b + 1, j : j + 1], k[b : b + 1], v[b : b + 1], [[np.arange(seen)]], scale
                )
                assert np.array_equal(listed, alone)
            elif len(seen) == 0:
                assert not out[b, j].any()  # a row seeing nothing: zeros
    # a head among the others of its KV head equals the head computed alone
    group = q.shape[2] // k.shape[1]
    for h in range(q.shape[2]):
        g = h // group
        alone = rows_attention.attend(q[:, :, h : h + 1], k[:, g : g + 1], v[:, g : g + 1], visible, scale)
        assert np.array_equal(alone[:, :, 0], out[:, :, h])


@settings(max_examples=60, deadline=None)
@given(problems())
def test_the_simd_path_computes_the_portable_loops_bits(problem):
    # the AVX2 path takes a KV head's query heads together, several keys at a time and the
    # values in blocks; every number it adds, it adds in the portable loop's order
    q, k, v, visible, scale = problem
    fast = rows_attention.attend(q, k, v, visible, scale, threads=2)
    before = rows_attention.simd(False)
    try:
        portable = rows_attention.attend(q, k, v, visible, scale, threads=2)
    finally:
        rows_attention.simd(before)
    assert np.array_equal(fast, portable)


def test_bad_arguments_are_refused():
    q = np.zeros((1, 2, 2, 4), np.float32)
    k = np.zeros((1, 1, 3, 4), np.float32)
    with pytest.raises(NativeError, match="invalid"):
        rows_attention.attend(q, k, k, [[1, 4]], 0.5)  # a row seeing past the keys
    with pytest.raises(NativeError, match="invalid"):
        rows_attention.attend(q, k, k, [[np.array([0]), np.array([3])]], 0.5)  # a slot past the keys
    with pytest.raises(ValueError, match="rows"):
        rows_attention.attend(q, k, k, [[1]], 0.5)
    with pytest.raises(ValueError, match="shapes"):
        rows_attention.attend(q, k[..., :3], k, [[1, 1]], 0.5)
    heads_not_grouped = np.zeros((1, 2, 3, 4), np.float32)
    with pytest.raises(NativeError, match="invalid"):
        rows_attention.attend(
            heads_not_grouped, np.zeros((1, 2, 3, 4), np.float32), np.zeros((1, 2, 3, 4)), [[1, 1]], 1
        )
