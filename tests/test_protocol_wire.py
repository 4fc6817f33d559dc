"""The envelope and body codec: round trips, and garbage always becomes a typed error."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from specmemo.protocol.errors import BadRequest, MessageTooLarge, VersionMismatch
from specmemo.protocol.wire import INLINE_ARRAY_BYTES, MAGIC, Command, Header, decode, encode, pack_body, unpack_body

plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)

arrays = hnp.arrays(
    dtype=st.sampled_from([np.int64, np.int32, np.float32, np.float64, np.uint8, np.bool_]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40),
)


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return (
            isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


@given(
    body=plain,
    arrs=st.lists(arrays, max_size=3),
    call_id=st.integers(0, 2**64 - 1),
    method=st.text(max_size=12),
    deadline=st.integers(0, 10**9),
    command=st.sampled_from(list(Command)),
)
def test_every_message_survives_a_round_trip(body, arrs, call_id, method, deadline, command):
    payload = {"body": body, "arrays": arrs}
    frames = encode(command, b"route", Header(id=call_id, method=method, deadline_ms=deadline), payload)
    msg = decode(frames)
    assert msg.command == command and msg.route == b"route"
    assert (msg.header.id, msg.header.method, msg.header.deadline_ms) == (call_id, method, deadline)
    assert _same(payload, msg.body)


def test_large_arrays_travel_as_frames_and_small_ones_inline():
    small = np.arange(INLINE_ARRAY_BYTES // 8, dtype=np.int64)
    large = np.arange(INLINE_ARRAY_BYTES, dtype=np.float64)
    raw, buffers = pack_body({"s": small, "l": large})
    assert len(buffers) == 1 and buffers[0] is large  # no copy of a contiguous array
    out = unpack_body(raw, [memoryview(large)])
    assert np.shares_memory(out["l"], large)  # decoded as a view of the frame, not a copy
    assert np.array_equal(out["s"], small)


def test_non_contiguous_and_big_endian_arrays_arrive_equal():
    a = np.arange(2000, dtype=">f8")[::2]
    raw, buffers = pack_body({"a": a})
    assert np.array_equal(unpack_body(raw, buffers)["a"], a)


@given(frames=st.lists(st.binary(max_size=64), max_size=8))
def test_any_frames_decode_to_a_message_or_a_typed_error(frames):
    try:
        decode(frames)
    except (BadRequest, VersionMismatch):
        pass


@given(junk=st.binary(max_size=200), buffers=st.lists(st.binary(max_size=64), max_size=3))
def test_any_body_bytes_decode_or_raise_bad_request(junk, buffers):
    try:
        unpack_body(junk, buffers)
    except BadRequest:
        pass


@given(spec=plain, buffers=st.lists(st.binary(max_size=64), max_size=3))
def test_any_array_reference_decodes_or_raises_bad_request(spec, buffers):
    raw = msgpack.packb({"x": {"$nd": spec}})
    try:
        unpack_body(raw, buffers)
    except BadRequest:
        pass


def test_a_buffer_that_does_not_match_its_shape_is_refused():
    raw = msgpack.packb({"x": {"$nd": ["<f8", [10], 0]}})
    with pytest.raises(BadRequest, match="need 80"):
        unpack_body(raw, [b"\0" * 79])


def test_an_array_reference_past_the_last_buffer_is_refused():
    raw = msgpack.packb({"x": {"$nd": ["<f8", [1], 3]}})
    with pytest.raises(BadRequest, match="names no buffer"):
        unpack_body(raw, [b"\0" * 8])


def test_object_dtype_never_decodes():
    raw = msgpack.packb({"x": {"$nd": ["|O", [1], b"\0" * 8]}})
    with pytest.raises(BadRequest, match="not allowed"):
        unpack_body(raw, [])


def test_wrong_version_is_a_version_mismatch_and_wrong_magic_a_bad_request():
    frames = encode(Command.REQUEST, b"x", Header(id=1))
    with pytest.raises(VersionMismatch):
        decode([b"SM\x09", *frames[1:]])
    with pytest.raises(BadRequest, match="magic"):
        decode([b"HTTP", *frames[1:]])
    assert frames[0] == MAGIC


def test_a_message_over_the_limit_is_refused_before_sending():
    with pytest.raises(MessageTooLarge, match="exceeds the limit"):
        encode(Command.REQUEST, b"x", Header(), {"a": np.zeros(1000)}, max_bytes=4000)


def test_header_fields_of_the_wrong_type_are_bad_requests():
    for bad in (
        {"id": -1},
        {"id": "x"},
        {"m": 3},
        {"dl": -5},
        {"s": "1"},
        [1, 2],
        {"dl": float("inf")},
        {"dl": float("nan")},
        {"dl": 1e300},
    ):
        with pytest.raises(BadRequest):
            Header.unpack(msgpack.packb(bad))


def test_an_array_key_packed_as_any_msgpack_str_type_is_an_array():
    # Other msgpack libraries may write the key "$nd" as str8 (d9): still an array.
    spec = msgpack.packb(["<f8", [2], b"\x00" * 16])
    for key in (b"\xa3$nd", b"\xd9\x03$nd", b"\xda\x00\x03$nd"):
        got = unpack_body(b"\x81" + key + spec)
        assert isinstance(got, np.ndarray) and got.shape == (2,), key


@given(value=st.integers(2**64, 2**80) | st.integers(-(2**80), -(2**63) - 1))
def test_an_int_msgpack_cannot_carry_is_refused_as_a_type_error(value):
    # Not an OverflowError from the fast path: encode's callers map TypeError to a clear error.
    with pytest.raises(TypeError, match="cannot encode int"):
        pack_body({"v": value, "a": np.zeros(3)})
    with pytest.raises(TypeError, match="cannot encode int"):
        pack_body({"v": value})


def test_a_message_that_fails_partway_is_ended_and_the_next_one_arrives_whole():
    import zmq

    from specmemo.protocol.wire import recv_frames, send_frames

    ctx = zmq.Context.instance()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    endpoint = f"inproc://partial-{id(a)}"
    b.bind(endpoint)
    a.connect(endpoint)
    try:
        with pytest.raises(TypeError):
            send_frames(a, [b"first", None, b"never"])  # a bad part after one went out
        send_frames(a, [b"x", b"y"])
        assert recv_frames(b) == [b"first", b""], "the half-sent message was not ended"
        assert recv_frames(b) == [b"x", b"y"], "the next message was glued to it"
    finally:
        a.close(linger=0)
        b.close(linger=0)


def test_deadlines_round_trip_without_overflow_or_rounding_to_none():
    from specmemo.protocol.calls import request_frames

    for timeout, expected in ((1e17, 0), (1e16, 0), (float("inf"), 0), (None, 0), (0.0004, 1), (2.5, 2500)):
        frames = request_frames(1, "echo", "echo", {"data": 1}, timeout, 1 << 20)
        assert Header.unpack(frames[3]).deadline_ms == expected, timeout
    # a foreign peer's float deadline below 1 ms is still a deadline, not "none"
    assert Header.unpack(msgpack.packb({"id": 1, "dl": 0.4})).deadline_ms == 1
