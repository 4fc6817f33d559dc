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


@pytest.mark.parametrize(
    "body, where",
    [
        ({}, "missing required field 'n'"),
        ({"n": "1"}, "params.n must be an integer"),
        ({"n": True}, "params.n must be an integer"),
        ({"n": 1, "x": "fast"}, "params.x must be a number"),
        ({"n": 1, "tags": ["a", 2]}, r"params.tags\[1\] must be a string"),
        ({"n": 1, "arr": [1, 2]}, "params.arr must be an array"),
        ([1, 2], "params must be a map"),
    ],
)
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


def test_a_str_enum_field_takes_one_of_its_values_and_refuses_any_other():
    from specmemo.protocol.actor_state import ActorState

    row = {"name": "a", "kind": "echo", "pid": 1, "state": "restarting", "restarts": 1, "uptime_s": 0.0, "inflight": 0}
    info = from_wire(ActorInfo, row)
    assert info.state is ActorState.RESTARTING and to_wire(info)["state"] == "restarting"
    with pytest.raises(BadRequest, match="body.state must be one of waiting, starting, ready"):
        from_wire(ActorInfo, {**row, "state": "backoff"})
    with pytest.raises(BadRequest, match="body.state must be one of"):
        from_wire(ActorInfo, {**row, "state": 3})


def test_a_field_absent_if_none_is_left_out_of_the_wire_map_only_while_it_is_none():
    from specmemo.protocol.methods import GrantAnswer

    granted = to_wire(GrantAnswer(blocks={"draft": 2}, gamma=3))
    assert "error" not in granted and granted["gamma"] == 3
    refused = to_wire(GrantAnswer(error=["OverBudget", "no room"]))
    assert refused["error"] == ["OverBudget", "no room"]
    assert from_wire(GrantAnswer, granted).error is None
    assert from_wire(GrantAnswer, refused) == GrantAnswer(error=["OverBudget", "no room"])


def test_a_result_of_the_declared_class_is_encoded_and_anything_else_is_internal():
    from specmemo.protocol.errors import Internal
    from specmemo.protocol.methods import EchoReply, Held, SleepReply, result_to_wire

    assert result_to_wire(SleepReply, SleepReply(slept=1.0), "reply") == {"slept": 1.0}
    with pytest.raises(Internal, match="a dict, not the declared SleepReply"):
        result_to_wire(SleepReply, {"slept": 2.0}, "reply")  # even one that would fit: the sender builds the class
    with pytest.raises(Internal, match="a EchoReply, not the declared SleepReply"):
        result_to_wire(SleepReply, EchoReply(data=1), "reply")
    with pytest.raises(Internal, match="a NoneType, not the declared Held"):
        result_to_wire(Held, None, "reply")
    with pytest.raises(Internal, match="a dict, not the declared Held"):
        result_to_wire(Held, {"freed": 1}, "reply")


def test_ready_and_notice_bodies_round_trip_and_a_malformed_one_is_a_bad_request():
    import msgpack

    from specmemo.protocol.control import Notice, NoticeEvent, ReadyBody, pack_control, unpack_control

    ready = ReadyBody(kind="echo", pid=42, methods=["echo", "sleep"])
    assert unpack_control(ReadyBody, pack_control(ready)) == ready
    notice = Notice(event=NoticeEvent.ACTOR_DIED, name="draft")
    assert pack_control(notice) == msgpack.packb({"event": "actor_died", "name": "draft"})
    assert unpack_control(Notice, pack_control(notice)).name == "draft"
    with pytest.raises(BadRequest, match="READY.pid must be an integer"):
        unpack_control(ReadyBody, msgpack.packb({"kind": "echo", "pid": "42"}), "READY")
    with pytest.raises(BadRequest, match="NOTICE.event must be one of actor_died"):
        unpack_control(Notice, msgpack.packb({"event": "moon_landed"}), "NOTICE")
    with pytest.raises(BadRequest, match="not valid msgpack"):
        unpack_control(ReadyBody, b"\xc1", "READY")
