"""The kernel's parts on their own, without a kernel: the registry, the call table, the
tarpit, the run directory, and the outbox on real inproc sockets."""

from __future__ import annotations

import os
import time

import pytest
import zmq

from specmemo.actors.call_table import CallTable
from specmemo.actors.outbox import Outbox, Tarpit
from specmemo.actors.registry import Registry
from specmemo.actors.run_dir import RunDir
from specmemo.actors.supervisor import Child
from specmemo.protocol.actor_state import ROUTABLE, ActorState
from specmemo.protocol.control import ReadyBody, kernel_frames
from specmemo.protocol.errors import Unauthorized
from specmemo.protocol.wire import Command, decode


def _ready(pid: int, kind: str = "echo") -> ReadyBody:
    return ReadyBody(kind=kind, pid=pid, methods=["echo"])


def test_a_supervised_actor_registers_ready_and_an_unknown_name_registers_external():
    reg = Registry([("echo", "echo")], managed=True)
    assert reg["echo"].state is ActorState.WAITING and reg.ready_names() == set()
    reg.register(b"id-1", "echo", _ready(100), now=1.0, supervised_pid=100)
    reg.register(b"id-2", "remote", _ready(200), now=1.0, supervised_pid=None)
    assert reg["echo"].state is ActorState.READY and reg["remote"].state is ActorState.EXTERNAL
    assert reg.ready_names() == {"echo", "remote"} and reg.name_of(b"id-2") == "remote"
    assert {e.state for e in reg.routable()} <= ROUTABLE


def test_a_live_name_cannot_be_taken_and_a_supervised_name_only_by_its_own_process():
    reg = Registry([("echo", "echo")], managed=True)
    with pytest.raises(Unauthorized, match="only its own process"):
        reg.register(b"id-1", "echo", _ready(999), now=1.0, supervised_pid=100)
    reg.register(b"id-1", "echo", _ready(100), now=1.0, supervised_pid=100)
    with pytest.raises(Unauthorized, match="held by a live actor"):
        reg.register(b"id-9", "echo", _ready(100), now=2.0, supervised_pid=100)
    reg.register(b"id-1", "echo", _ready(100), now=3.0, supervised_pid=100)  # the same one again
    assert reg["echo"].registered_at == 3.0


def test_an_actor_that_went_away_is_stopped_not_routable_and_its_name_free_again():
    reg = Registry([], managed=False)
    reg.register(b"id-1", "remote", _ready(1), now=1.0, supervised_pid=None)
    entry = reg.went_away("remote")
    assert entry is not None and entry.state is ActorState.STOPPED and not entry.identity
    assert reg.name_of(b"id-1") is None and reg.routable() == [] and reg.went_away("nobody") is None
    reg.register(b"id-2", "remote", _ready(2), now=2.0, supervised_pid=None)
    assert reg["remote"].state is ActorState.EXTERNAL and reg["remote"].pid == 2


def test_the_actors_table_shows_the_supervisors_state_until_the_actor_registers():
    reg = Registry([("echo", "echo"), ("solver", "solver")], managed=True)
    children = {"echo": (ActorState.STARTING, 100, 2), "solver": (ActorState.RESTARTING, 0, 3)}
    reg.register(b"id-1", "echo", _ready(100), now=10.0, supervised_pid=100)
    rows = {r.name: r for r in reg.table(12.5, lambda name: 7 if name == "echo" else 0, children.get)}
    assert (rows["echo"].state, rows["echo"].pid, rows["echo"].restarts) == (ActorState.READY, 100, 2)
    assert rows["echo"].uptime_s == 2.5 and rows["echo"].inflight == 7
    assert (rows["solver"].state, rows["solver"].uptime_s) == (ActorState.RESTARTING, 0.0)


def test_every_component_keeps_its_states_in_the_one_vocabulary():
    from specmemo.actors.config import ActorConfig

    assert Child(ActorConfig(name="echo", kind="echo")).state is ActorState.WAITING
    assert Registry([("echo", "echo")], managed=True)["echo"].state is ActorState.WAITING
    assert [s.value for s in ActorState] == [
        "waiting",
        "starting",
        "ready",
        "external",
        "restarting",
        "stopped",
        "failed",
    ]


def test_the_call_table_counts_per_actor_and_per_client_and_forgets_a_dead_actors_calls():
    calls = CallTable()
    calls.open((b"c1", 1), "echo", float("inf"), 0.0, client=b"c1")
    calls.open((b"c1", 2), "echo", float("inf"), 0.0, client=b"c1")
    calls.open((b"a-draft", 1), "memory", float("inf"), 0.0)  # an actor's call: no client
    assert (len(calls), calls.of_actor("echo"), calls.of_client(b"c1")) == (3, 2, 2)
    assert calls.pop((b"c1", 1)).actor == "echo" and calls.pop((b"c1", 1)) is None
    assert (calls.of_actor("echo"), calls.of_client(b"c1")) == (1, 1)
    assert calls.pop_actor("echo") == [(b"c1", 2)]
    assert (calls.of_actor("echo"), calls.of_client(b"c1"), len(calls)) == (0, 0, 1)


def test_calls_long_past_their_deadline_are_forgotten_and_the_others_kept():
    calls = CallTable()
    calls.open((b"c", 1), "echo", 10.0, 0.0, client="key")
    calls.open((b"c", 2), "echo", 20.0, 0.0, client="key")
    calls.open((b"c", 3), "echo", float("inf"), 0.0, client="key")
    assert calls.pop_expired(now=16.0, grace=5.0) == [(b"c", 1)]
    assert (b"c", 2) in calls and (b"c", 3) in calls and calls.of_client("key") == 2


def test_the_tarpit_releases_refusals_in_due_order_and_holds_none_when_off_or_full():
    pit = Tarpit(0.1, limit=2)
    assert pit.hold(["late"], now=0.0, jitter=1.5) and pit.hold(["early"], now=0.0, jitter=0.5)
    assert not pit.hold(["third"], now=0.0, jitter=1.0)  # full: send at once
    assert pit.next_due() == pytest.approx(0.05) and pit.due(0.01) == []
    assert pit.due(1.0) == [["early"], ["late"]] and len(pit) == 0 and pit.next_due() is None
    assert not Tarpit(0.0).hold(["x"], now=0.0, jitter=1.0)


def test_a_run_directory_is_claimed_once_and_what_a_dead_kernel_left_is_cleared(tmp_path):
    d = RunDir("t", tmp_path / "run")
    (d.path / "kernel.pid").write_text("999999999")  # no such process
    (d.path / "stale").write_text("x")
    d.claim()
    assert (d.path / "kernel.pid").read_text() == str(os.getpid()) and not (d.path / "stale").exists()
    (d.path / "kernel.pid").write_text(str(os.getppid()))  # another live process
    with pytest.raises(RuntimeError, match="already running"):
        d.claim()
    d.publish_endpoint("ipc:///nonexistent")
    d.remove("tcp://127.0.0.1:1")
    assert not d.path.exists()


def test_the_outbox_holds_sends_while_routing_then_sends_them_in_order_and_reports_failures():
    ctx = zmq.Context.instance()
    endpoint = f"inproc://outbox-{time.monotonic_ns()}"
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.bind(endpoint)
    peer = ctx.socket(zmq.DEALER)
    peer.setsockopt(zmq.ROUTING_ID, b"peer")
    peer.connect(endpoint)
    try:
        peer.send(b"hello")
        assert router.poll(2000) and router.recv_multipart() == [b"peer", b"hello"]
        warned, failed = [], []
        out = Outbox(router, lambda key, line: warned.append(key))
        out.holding = True
        for i in (1, 2, 3):
            out.send(kernel_frames(b"peer", Command.REPLY, i))
        out.send(kernel_frames(b"gone", Command.HEARTBEAT), failed.append)
        assert not peer.poll(100), "sent while a batch was being routed"
        out.flush()
        ids = []
        while peer.poll(1000) and len(ids) < 3:
            msg = decode(peer.recv_multipart())
            assert msg.command == Command.REPLY and msg.route == b"kernel"
            ids.append(msg.header.id)
        assert ids == [1, 2, 3]
        assert len(failed) == 1 and failed[0].errno == zmq.EHOSTUNREACH and warned == []
        out.holding = False
        out.send(kernel_frames(b"gone", Command.HEARTBEAT))  # no handler: logged
        assert warned == [f"send-{zmq.EHOSTUNREACH}"]
    finally:
        peer.close(0)
        router.close(0)


def test_a_forwarded_message_changes_only_its_address_and_route():
    from specmemo.protocol.control import forwarded_frames
    from specmemo.protocol.wire import Header, encode

    sent = [b"client-id", *encode(Command.REQUEST, b"echo", Header(id=5, method="echo"), {"data": 1})]
    passed = forwarded_frames(sent, b"actor-id", b"client-id")
    assert passed[0] == b"actor-id" and passed[4:] == sent[4:]
    msg = decode(passed[1:])
    assert (msg.command, msg.route, msg.header.id, msg.body) == (Command.REQUEST, b"client-id", 5, {"data": 1})
    own = decode(kernel_frames(b"peer", Command.ERROR, 9, b"\x80")[1:])
    assert (own.command, own.route, own.header.id, own.body) == (Command.ERROR, b"kernel", 9, {})
