"""The int8 linear kernel (native/q8.c) against numpy: the same bits on every instruction-set
path as the numpy reference; each row as if it were alone; any n and k; bad calls refused."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specmemo.native import NativeError, q4, q8


@st.composite
def problems(draw):
    n = draw(st.integers(1, 70))  # blocks of 16 rows, and a last one part empty
    k = draw(st.integers(1, 300))  # quads and octets of inputs, and a padded tail
    m = draw(st.integers(1, 40))  # beyond one pass of rows (9) and one tile (32)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    weight = (rng.standard_normal((n, k)) * draw(st.sampled_from([1e-3, 1.0, 50.0]))).astype(np.float32)
    if draw(st.booleans()):
        weight[0] = 0  # an all-zero weight row
    x = rng.standard_normal((m, k)).astype(np.float32) * draw(st.sampled_from([1e-4, 1.0, 1e3]))
    if draw(st.booleans()):
        x[0] = 0  # an all-zero input row
    return weight, x


@settings(max_examples=60, deadline=None)
@given(problems())
def test_every_path_computes_the_numpy_reference_bit_for_bit_and_rows_do_not_depend_on_each_other(problem):
    weight, x = problem
    w = q8.pack(*q8.quantize(weight))
    reference = q8.reference(x, w)
    for isa in q4.available_isas():
        assert np.array_equal(q8.linear(x, w, threads=2, isa=isa), reference), isa
    for i in range(len(x)):  # one row alone, on the fastest path
        assert np.array_equal(q8.linear(x[i : i + 1].copy(), w, threads=1), reference[i : i + 1])


@settings(max_examples=30, deadline=None)
@given(problems())
def test_the_layout_round_trips_and_the_product_is_close_to_the_float_one(problem):
    weight, x = problem
    codes, scale = q8.quantize(weight)
    w = q8.pack(codes, scale)
    assert np.array_equal(q8.unpack_codes(w), codes)
    assert np.array_equal(w.sums[: len(codes)], codes.sum(axis=1, dtype=np.int32)) and not w.sums[len(codes) :].any()
    assert np.array_equal(w.scales[: len(codes)], scale) and not w.scales[len(codes) :].any()
    # each weight within half a step of its float value, plus the float32 rounding of w / scale
    # (a quotient just under k + 1/2 may round to the tie and then to the far even neighbour)
    error = np.abs(codes * scale[:, None].astype(np.float64) - weight)
    assert (error <= 0.5 * scale[:, None].astype(np.float64) + np.abs(weight) * 2.0**-23).all()
    # the product: activation and weight rounding bounded by their steps
    y = q8.linear(x, w)
    levels = (codes * scale[:, None]).astype(np.float64)
    amax = np.abs(x).max(1, keepdims=True)
    bound = (amax / 127 / 2) @ np.abs(levels).sum(1, keepdims=True).T + np.abs(x) @ np.abs(levels - weight).T
    assert (np.abs(y - x.astype(np.float64) @ weight.T.astype(np.float64)) <= bound * 1.01 + 1e-5).all()


def test_a_stored_copy_is_taken_only_with_its_shapes():
    w = q8.pack(*q8.quantize(np.ones((20, 12), dtype=np.float32)))
    again = q8.Q8Weights.from_arrays(20, 12, {name: a.copy() for name, a in w.arrays().items()})
    x = np.arange(24, dtype=np.float32).reshape(2, 12)
    assert np.array_equal(q8.linear(x, again), q8.linear(x, w))
    with pytest.raises(ValueError, match="codes"):
        q8.Q8Weights.from_arrays(20, 20, w.arrays())  # inputs padded to 24, not 16
    with pytest.raises(ValueError, match="sums"):
        q8.Q8Weights.from_arrays(20, 12, {**w.arrays(), "sums": w.sums.astype(np.int64)})
    # q4's weights go through the same check: a missing or a strided array is named
    four = q4.empty(16, 32, 8)
    with pytest.raises(ValueError, match="scales missing"):
        q4.Q4Weights.from_arrays(16, 32, 8, {"codes": four.codes})
    with pytest.raises(ValueError, match="codes"):
        q4.Q4Weights.from_arrays(16, 32, 8, {"codes": np.zeros((1, 8, 64), np.uint8)[:, ::2], "scales": four.scales})
    assert q4.Q4Weights.from_arrays(16, 32, 8, four.arrays()).writable()


def test_bad_calls_are_refused_before_the_kernel_runs():
    w = q8.pack(*q8.quantize(np.ones((16, 8), dtype=np.float32)))
    with pytest.raises(ValueError, match="float32"):
        q8.linear(np.ones((2, 8)), w)  # float64
    with pytest.raises(ValueError, match="float32"):
        q8.linear(np.ones((2, 9), dtype=np.float32), w)
    with pytest.raises(ValueError, match="out must be"):
        q8.linear(np.ones((2, 8), dtype=np.float32), w, out=np.empty((2, 15), dtype=np.float32))
    with pytest.raises(ValueError, match="int8 codes"):
        q8.pack(np.ones((4, 4), dtype=np.int16), np.ones(4, dtype=np.float32))
    # a kernel refusal (k beyond what an int32 dot product holds) is a NativeError
    wide = q8.Q8Weights(16, q8.lib.Q8_MAX_K + 8, w.codes, w.scales, w.sums)
    with pytest.raises(NativeError, match="invalid"):
        q8.linear_ptr(1, wide, np.zeros(1, np.float32).ctypes.data, np.zeros(16, np.float32).ctypes.data, 1)


@pytest.mark.parametrize("signs", [(1, 1), (1, -1), (-1, 1), (-1, -1)])
def test_the_largest_dot_products_are_exact_on_every_path(signs):
    # codes and activations at ±127 over the widest k: the int32 sum at its limit, the VNNI path's
    # offset sums beyond it (they wrap and come back), and AVX2's pair sums at 2 · 127 · 127
    k = q8.lib.Q8_MAX_K
    weight = np.full((17, k), signs[0], dtype=np.float32)
    x = np.full((3, k), signs[1], dtype=np.float32)
    w = q8.pack(*q8.quantize(weight))
    expected = np.float32(signs[0] * signs[1] * 127 * 127 * k) * (np.float32(1) / 127) * (np.float32(1) / 127)
    for isa in q4.available_isas():
        y = q8.linear(x, w, threads=2, isa=isa)
        assert np.array_equal(y, q8.reference(x, w)) and (y == expected).all(), isa


def test_a_code_of_minus_128_is_refused():
    with pytest.raises(ValueError, match="-127..127"):
        q8.pack(np.full((16, 8), -128, dtype=np.int8), np.ones(16, dtype=np.float32))


def _same_weights(a: q8.Q8Weights, b: q8.Q8Weights) -> bool:
    return (
        (a.n, a.k) == (b.n, b.k)
        and np.array_equal(a.codes, b.codes)
        and np.array_equal(a.scales.view(np.int32), b.scales.view(np.int32))  # the bits, NaN or not
        and np.array_equal(a.sums, b.sums)
    )


@settings(max_examples=40, deadline=None)
@given(problems(), st.integers(0, 2**32 - 1), st.booleans())
def test_the_c_packer_writes_numpys_codes_on_every_path_from_float32_or_bfloat16_rows_in_any_pieces(
    problem, seed, special
):
    weight = problem[0]
    n, k = weight.shape
    rng = np.random.default_rng(seed)
    if special:  # NaN and infinities where they fall, and a whole NaN row
        weight.flat[rng.integers(0, weight.size, 3)] = [np.nan, np.inf, -np.inf]
        weight[rng.integers(0, n)] = np.nan
    bits = (weight.view(np.uint32) >> 16).astype(np.uint16)  # bfloat16 by truncation
    as_float = (bits.astype(np.uint32) << 16).view(np.float32)
    cuts = sorted(rng.integers(0, n + 1, 2))  # rows packed in three calls, at any boundary
    for values, source, bfloat16 in ((weight, weight, False), (as_float, bits, True)):
        reference = q8.reference_pack(values)
        for isa in [*q4.available_isas(), None]:
            assert _same_weights(q8.quantize_pack(source, bfloat16, isa), reference), (isa, bfloat16)
        pieces = q8.zeros(n, k)
        for lo, hi in zip([0, *cuts], [*cuts, n]):
            q8.pack_rows(pieces, lo, source[lo:hi], bfloat16)
        assert _same_weights(pieces, reference), bfloat16


def test_the_quantized_rule_on_special_values():
    weight = np.array([[0, 0, 0], [1, np.nan, -2], [np.inf, 1, -1], [254, -5, 3]], dtype=np.float32)
    codes, scale = q8.quantize(weight)
    assert scale[0] == np.finfo(np.float32).tiny and not codes[0].any()  # an all-zero row
    assert scale[1] == np.float32(2) / 127 and list(codes[1]) == [64, 0, -127]  # NaN: ignored, code 0
    assert scale[2] == np.inf and not codes[2].any()  # inf / inf is NaN: code 0
    assert list(codes[3]) == [127, -2, 2]  # halves to even: -2.5 -> -2, 1.5 -> 2
    assert _same_weights(q8.quantize_pack(weight), q8.reference_pack(weight))


def test_bad_pack_calls_are_refused():
    w = q8.zeros(20, 12)
    with pytest.raises(ValueError, match="cannot pack"):
        q8.pack_rows(w, 15, np.ones((6, 12), np.float32))  # past the last row
    with pytest.raises(ValueError, match="cannot pack"):
        q8.pack_rows(w, 0, np.ones((2, 11), np.float32))
    with pytest.raises(ValueError, match="n >= 1"):
        q8.zeros(0, 12)


def test_halves_round_to_even_on_every_path_in_the_vector_body_and_the_tail():
    odd = np.array([1, 3, 5, -1, -3, -5, 7, 9, -7, -9, 11, 13, 15, -11, -13, 17, 19], dtype=np.float32)
    weight = np.concatenate([[254], odd])[None, :].astype(np.float32)  # scale 2: every other input is k + 1/2
    expected = [127, 0, 2, 2, 0, -2, -2, 4, 4, -4, -4, 6, 6, 8, -6, -6, 8, 10]
    assert list(q8.quantize(weight)[0][0]) == expected
    for isa in [*q4.available_isas(), None]:
        assert list(q8.unpack_codes(q8.quantize_pack(weight, isa=isa))[0]) == expected, isa


def test_pack_rows_refuses_arrays_it_cannot_write():
    w = q8.zeros(20, 12)
    frozen = q8.Q8Weights(20, 12, w.codes.copy(), w.scales, w.sums)
    frozen.codes.flags.writeable = False  # a weight mapped read-only from the store, say
    with pytest.raises(ValueError, match="writable"):
        q8.pack_rows(frozen, 0, np.ones((4, 12), np.float32))


def test_packing_over_stale_codes_leaves_no_trace_in_the_product():
    # the VNNI path counts every code of a row, padding included: pack_rows must write the padding
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((20, 12)).astype(np.float32)  # k = 12: 4 padded inputs a row
    x = rng.standard_normal((3, 12)).astype(np.float32)
    stale = q8.zeros(20, 12)
    stale.codes[...] = 1
    q8.pack_rows(stale, 0, weight)
    reference = q8.reference(x, q8.reference_pack(weight))
    for isa in q4.available_isas():
        assert np.array_equal(q8.linear(x, stale, isa=isa), reference), isa
