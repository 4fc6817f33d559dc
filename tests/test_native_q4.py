"""The 4-bit linear kernel (native/q4.c) against numpy: the same quantity on every instruction-set
path, bit for bit; each row as if it were alone; close to the float product; bad calls refused."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specmemo.native import NativeError, q4


@st.composite
def problems(draw):
    group = draw(st.sampled_from([8, 16, 32, 64, 128]))
    k = group * draw(st.integers(1, 6))
    n = 16 * draw(st.integers(1, 5))
    m = draw(st.integers(1, 40))  # beyond one pass of rows (8) and one tile (32)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-3, 1.0, 50.0]))
    weight = (rng.standard_normal((n, k)) * scale).astype(np.float32)
    if draw(st.booleans()):
        weight[: n // 2, :group] = 0.25  # constant groups: zero scale
    x = rng.standard_normal((m, k)).astype(np.float32) * draw(st.sampled_from([1e-4, 1.0, 1e3]))
    if draw(st.booleans()):
        x[0] = 0  # an all-zero row
    return weight, x, group


@settings(max_examples=60, deadline=None)
@given(problems())
def test_every_path_computes_the_numpy_reference_and_rows_do_not_depend_on_each_other(problem):
    weight, x, group = problem
    w = q4.pack(weight, group)
    results = {isa: q4.linear(x, w, threads=2, isa=isa) for isa in q4.available_isas()}
    base = results["scalar"]
    for isa, y in results.items():
        assert np.array_equal(y, base), isa
    reference = q4.reference(x, w)
    assert np.allclose(base, reference, rtol=1e-5, atol=1e-6 * (np.abs(reference).max() + 1e-30))
    for i in range(len(x)):  # one row alone, on the fastest path
        assert np.array_equal(q4.linear(x[i : i + 1].copy(), w, threads=1), base[i : i + 1])


@settings(max_examples=30, deadline=None)
@given(problems())
def test_the_layout_round_trips_and_the_product_is_close_to_the_float_one(problem):
    weight, x, group = problem
    w = q4.pack(weight, group)
    codes, scale, zero = q4.quantize(weight, group)
    assert np.array_equal(q4.unpack_codes(w), codes)
    s, z = q4.unpack_scales(w)
    assert np.array_equal(s, scale.astype(np.float32)) and np.array_equal(z, zero.astype(np.float32))
    # each weight within half a level (plus float16 rounding of scale and zero) of its float value
    levels = np.repeat(s, group, axis=1) * codes + np.repeat(z, group, axis=1)
    assert (np.abs(levels - weight) <= 0.5 * np.repeat(s, group, axis=1) + 2e-3 * np.abs(weight) + 1e-6).all()
    # the product: activation and weight rounding bounded by their steps
    y = q4.linear(x, w)
    amax = np.abs(x).max(1, keepdims=True)
    bound = (amax / 127 / 2) @ np.abs(levels).sum(1, keepdims=True).T + np.abs(x) @ np.abs(levels - weight).T
    assert (np.abs(y - x.astype(np.float64) @ weight.T.astype(np.float64)) <= bound * 1.01 + 1e-5).all()


@settings(max_examples=60, deadline=None)
@given(problems(), st.sampled_from([1.0, 1e-7, 1e5]), st.booleans())
def test_the_c_packer_writes_the_numpy_reference_on_every_path(problem, magnitude, bfloat16):
    # magnitudes whose float16 scale is subnormal or whose zero overflows to -inf, and bfloat16
    # bit patterns against the reference on their float32 values
    weight, _, group = problem
    weight = (weight * np.float32(magnitude)).astype(np.float32)
    if bfloat16:
        bits = (weight.view(np.uint32) >> 16).astype(np.uint16)
        weight = (bits.astype(np.uint32) << 16).view(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # inf / inf where scale and zero overflow: code 0
        reference = q4.reference_pack(weight, group)
    for isa in q4.available_isas():
        packed = q4.pack(bits, group, bfloat16=True, isa=isa) if bfloat16 else q4.pack(weight, group, isa=isa)
        assert np.array_equal(packed.codes, reference.codes), isa
        assert np.array_equal(packed.scales, reference.scales), isa


@settings(max_examples=40, deadline=None)
@given(problems(), st.integers(0, 2**32 - 1), st.booleans())
def test_the_packers_paths_agree_on_nan_infinities_and_signed_zeros(problem, seed, bfloat16):
    # NaN groups, infinities and zero extremes of either sign: every path writes the reference's
    # bits (`q4.quantize` spells out the rule for each)
    weight, _, group = problem
    rng = np.random.default_rng(seed)
    weight = weight.copy()
    spots = rng.integers(0, weight.size, 6)
    weight.flat[spots] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 0.0]
    weight[rng.integers(0, len(weight)), :group] = rng.choice(np.array([0.0, -0.0], np.float32), group)
    bits = (weight.view(np.uint32) >> 16).astype(np.uint16)
    source = bits if bfloat16 else weight
    with np.errstate(over="ignore", invalid="ignore"):
        reference = q4.reference_pack((bits.astype(np.uint32) << 16).view(np.float32) if bfloat16 else weight, group)
    scalar = q4.pack(source, group, bfloat16=bfloat16, isa="scalar")
    for isa in q4.available_isas():
        packed = q4.pack(source, group, bfloat16=bfloat16, isa=isa)
        assert np.array_equal(packed.codes, scalar.codes) and np.array_equal(packed.scales, scalar.scales), isa
    assert np.array_equal(scalar.codes, reference.codes) and np.array_equal(scalar.scales, reference.scales)


def test_float16_rounding_is_numpys_on_a_sweep_of_float32_bit_patterns():
    x = np.arange(0, 2**32, 4093, dtype=np.uint64).astype(np.uint32).view(np.float32)
    edges = np.array([65504, 65519.99, 65520, 2.0**-24, 2.0**-25, 1.5 * 2.0**-25, 2.0**-14, -0.0, np.inf], np.float32)
    x = np.concatenate([x, edges, -edges])
    with np.errstate(over="ignore", invalid="ignore"):
        expected = x.astype(np.float16).view(np.uint16)
    got = q4.half_from_float(x)
    finite = ~np.isnan(x)
    assert np.array_equal(got[finite], expected[finite])
    assert np.isnan(got[~finite].view(np.float16)).all()


def test_bad_shapes_and_arguments_are_refused():
    w = q4.pack(np.ones((16, 32), np.float32), 32)
    with pytest.raises(ValueError, match="cannot pack"):
        q4.pack(np.ones((15, 32), np.float32), 32)  # outputs not a multiple of 16
    with pytest.raises(ValueError, match="cannot pack"):
        q4.pack(np.ones((16, 40), np.float32), 32)  # inputs not a multiple of the group
    with pytest.raises(ValueError, match="float32"):
        q4.linear(np.ones((2, 32), np.float64), w)
    with pytest.raises(ValueError, match="float32"):
        q4.linear(np.ones((2, 16), np.float32), w)
    with pytest.raises(NativeError, match="invalid"):
        q4.linear(np.ones((2, 32), np.float32), w, threads=0)
    missing = [name for name in q4.ISAS if name not in q4.available_isas()]
    for name in missing:
        with pytest.raises(NativeError, match="instruction set"):
            q4.linear(np.ones((2, 32), np.float32), w, isa=name)
    assert q4.best_isa() in q4.available_isas() and "scalar" in q4.available_isas()
    assert q4.linear(np.ones((0, 32), np.float32), w).shape == (0, 16)


@settings(max_examples=40, deadline=None)
@given(problems(), st.data())
def test_a_product_of_some_row_blocks_writes_exactly_their_columns_of_the_whole_product(problem, data):
    weight, x, group = problem
    w = q4.pack(weight, group)
    blocks = data.draw(st.lists(st.integers(0, w.n // 16 - 1), unique=True, max_size=w.n // 16))
    columns = np.array([16 * b + i for b in blocks for i in range(16)], dtype=np.int64)
    whole = q4.linear(x, w, threads=2)
    for isa in q4.available_isas():
        out = np.full((len(x), w.n), np.nan, dtype=np.float32)
        q4.linear(x, w, threads=2, isa=isa, out=out, blocks=np.array(blocks, dtype=np.int64))
        assert np.array_equal(out[:, columns], whole[:, columns]), isa
        assert np.isnan(np.delete(out, columns, axis=1)).all(), isa


def test_a_block_list_out_of_range_or_with_a_repeat_is_refused():
    w = q4.pack(np.ones((48, 32), np.float32), 32)
    x, out = np.ones((2, 32), np.float32), np.zeros((2, 48), np.float32)
    for bad in ([3], [-1], [0, 2, 0]):
        with pytest.raises(NativeError, match="invalid"):
            q4.linear(x, w, out=out, blocks=np.array(bad))
    assert not out.any()  # refused before writing anything
    with pytest.raises(ValueError, match="out must be"):
        q4.linear(x, w, out=np.zeros((2, 32), np.float32), blocks=np.array([0]))


def test_packing_in_pieces_into_one_weight_equals_packing_it_whole():
    rng = np.random.default_rng(5)
    weight = rng.standard_normal((80, 64)).astype(np.float32)
    whole = q4.pack(weight, 32)
    pieces = q4.empty(80, 64, 32)
    for start, stop in ((0, 16), (16, 64), (64, 80)):
        q4.pack(weight[start:stop], 32, out=pieces.rows(start, stop))
    assert np.array_equal(pieces.codes, whole.codes) and np.array_equal(pieces.scales, whole.scales)
    reference = q4.reference_pack(weight, 32)  # and both are numpy's
    assert np.array_equal(whole.codes, reference.codes) and np.array_equal(whole.scales, reference.scales)
    with pytest.raises(ValueError, match="whole blocks"):
        pieces.rows(8, 24)
    with pytest.raises(ValueError, match="into"):
        q4.pack(weight[:16], 32, out=pieces.rows(0, 32))  # 16 rows into 32
    with pytest.raises(ValueError, match="into"):
        q4.pack(weight[:16], 16, out=pieces.rows(0, 16))  # another group
    frozen = pieces.rows(0, 16)
    frozen.codes.flags.writeable = False  # a weight mapped read-only from the store, say
    with pytest.raises(ValueError, match="into"):
        q4.pack(weight[:16], 32, out=frozen)
