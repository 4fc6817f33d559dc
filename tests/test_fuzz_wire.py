"""Hostile frames from a raw DEALER, to the kernel and through it to every actor's runtime.

The fuzzer (``specmemo.deploy.fuzz.hostile_frames``) is seeded: random bytes, truncated
multipart messages, wrong magic or version, bad msgpack, maps of wrong types, huge declared
array sizes, buffers that do not match their shape, READY/NOTICE/REPLY from a client, floods
of cancels for unknown ids. Nothing it sends is a valid call.
"""

from __future__ import annotations

import os
import threading
import time

import msgpack
import pytest
from conftest import raw_dealer

from specmemo.deploy.fuzz import FuzzReport, fuzz
from specmemo.deploy.load import beyond_prefix_stores
from specmemo.deploy.local import actor_rows
from specmemo.protocol import BadRequest
from specmemo.protocol.wire import unpack_body

LONG = os.environ.get("SPECMEMO_LONG") == "1"


def fuzz_while_serving(d, seed: int, count: int) -> tuple[FuzzReport, float, dict]:
    """Fuzz ``count`` frames while a normal client calls echo; its success rate comes back."""
    with d.client(timeout=10) as c:
        before = actor_rows(c)
    stop, outcomes = threading.Event(), []

    def normal_client() -> None:
        with d.client(timeout=10) as c:
            i = 0
            while not stop.is_set():
                try:
                    outcomes.append(c.call("echo", "echo", data=i).data == i)
                except Exception:
                    outcomes.append(False)
                i += 1
                time.sleep(0.005)

    th = threading.Thread(target=normal_client)
    th.start()
    try:
        report = fuzz(d.endpoint, seed, count, {n: r.kind for n, r in before.items()})
    finally:
        stop.set()
        th.join(30)
    with d.client(timeout=10) as c:
        after = actor_rows(c)
    assert d.proc.poll() is None, "the kernel died"
    assert {n: (r.pid, r.restarts) for n, r in after.items()} == {n: (r.pid, 0) for n, r in before.items()}, (
        "an actor died under the fuzz"
    )
    assert outcomes, "the normal client made no call"
    print(
        f"{report.sent} hostile frames: {report.replies}/{report.expected_replies} typed errors back, "
        f"{dict(report.errors)}; normal client {sum(outcomes)}/{len(outcomes)} calls served"
    )
    return report, sum(outcomes) / len(outcomes), after


def test_thousands_of_hostile_frames_each_get_one_typed_error_and_kill_nothing(soak_deployment):
    report, success, _ = fuzz_while_serving(soak_deployment, seed=1, count=3000)
    assert report.sent == 3000 and report.expected_replies > 2000
    assert report.replies == report.expected_replies, report
    assert report.not_errors == 0
    assert "Internal" not in report.errors, report.errors
    assert set(report.errors) <= {"BadRequest", "UnknownActor", "UnknownMethod", "VersionMismatch", "Unauthorized"}
    assert len(report.labels) == 17, "a category of hostile frames was never generated"
    assert success == 1.0, f"the normal client succeeded in {success:.1%} of its calls during the fuzz"


def test_the_memory_actor_holds_nothing_after_the_fuzz(soak_deployment):
    with soak_deployment.client(timeout=10) as c:
        usage = c.usage()
        sessions = c.call("verifier", "sessions")
    assert beyond_prefix_stores(usage) == 0 and not usage.sessions and sessions.sessions == []


@pytest.mark.slow
@pytest.mark.skipif(not LONG, reason="long run: SPECMEMO_LONG=1")
def test_a_hundred_thousand_hostile_frames_kill_nothing(soak_deployment):
    report, success, _ = fuzz_while_serving(soak_deployment, seed=2, count=100_000)
    assert report.replies == report.expected_replies and report.not_errors == 0
    assert "Internal" not in report.errors and success == 1.0


def test_an_array_shape_whose_int64_product_wraps_around_is_refused_by_its_size():
    # 2**32 * 2**32 wraps to 0 in int64: an empty buffer used to pass the size check.
    body = msgpack.packb({"a": {"$nd": ["<f8", [1 << 32, 1 << 32], b""]}}, use_bin_type=True)
    with pytest.raises(BadRequest, match="need 147573952589676412928"):
        unpack_body(body)


def test_a_header_id_of_true_is_answered_with_a_header_the_caller_can_decode(soak_deployment):
    from specmemo.protocol.errors import error_from_wire
    from specmemo.protocol.wire import MAGIC, Command, decode

    s = raw_dealer(soak_deployment.endpoint)
    try:
        s.send_multipart([MAGIC, b"\x01", b"echo", msgpack.packb({"id": True}), b"\xc0"])
        assert s.poll(5000)
        msg = decode(s.recv_multipart())
    finally:
        s.close()
    assert msg.command == Command.ERROR and msg.header.id == 0
    assert isinstance(error_from_wire(msg.body), BadRequest)
