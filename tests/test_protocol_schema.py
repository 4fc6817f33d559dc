"""Typed messages: validated at the boundary, unknown fields ignored."""
from __future__ import annotations

import numpy as np
import pytest

from specmemo.protocol import methods
from specmemo.protocol.errors import BadRequest, UnknownMethod
from specmemo.protocol.methods import ActorInfo, ActorsReply, SleepRequest
from specmemo.protocol.schema import from_wire, message, to_wire


@message
class Sample:
    n: int
    x: float = 0.0
    tags: list[str] | None = None
    arr: np.ndarray | None = None


def test_valid_body_becomes_the_typed_message_and_ints_widen_to_floats():
    s = from_wire(Sample, {"n": 3, "x": 2, "tags": ["a"], "arr": np.zeros(2)})
    assert s.n == 3 and s.x == 2.0 and isinstance(s.x, float) and s.tags == ["a"]


def test_unknown_fields_are_ignored():
    assert from_wire(Sample, {"n": 1, "future_field": {"x": 1}}).n == 1


@pytest.mark.parametrize("body, where", [
    ({}, "missing required field 'n'"),
    ({"n": "1"}, "params.n must be an integer"),
    ({"n": True}, "params.n must be an integer"),
    ({"n": 1, "x": "fast"}, "params.x must be a number"),
    ({"n": 1, "tags": ["a", 2]}, r"params.tags\[1\] must be a string"),
    ({"n": 1, "arr": [1, 2]}, "params.arr must be an array"),
    ([1, 2], "params must be a map"),
])
def test_schema_violations_name_the_offending_field(body, where):
    with pytest.raises(BadRequest, match=where):
        from_wire(Sample, body, "params")


def test_nested_messages_round_trip_through_plain_maps():
    reply = ActorsReply(actors=[ActorInfo("a", "echo", 1, "ready", 0, 1.5, 0)], endpoint="e")
    assert from_wire(ActorsReply, to_wire(reply)) == reply


def test_unknown_method_is_a_typed_error():
    with pytest.raises(UnknownMethod):
        methods.lookup("echo", "nope")
    assert methods.validate_request("echo", "sleep", {"seconds": 1}) == SleepRequest(1.0)


def test_every_method_is_named_kind_dot_method_and_answers_with_a_reply_or_chunks():
    for name, spec in methods.METHODS.items():
        assert name.count(".") == 1, name
        assert spec.reply is not None or spec.chunk is not None, name
