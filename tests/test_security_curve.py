"""CURVE on tcp: only allowed keys can call or register; names of live actors cannot be taken."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import numpy as np
import pytest
import zmq

from specmemo.deploy.tiny import tiny_config
from specmemo.protocol import Client, DeadlineExceeded, Unauthorized
from specmemo.protocol.curve import client_keys, generate
from specmemo.protocol.errors import error_from_wire
from specmemo.protocol.wire import Command, Header, decode, encode


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def keys():
    d = Path(tempfile.mkdtemp(prefix="smkeys", dir="/tmp"))
    allowed = d / "allowed"
    allowed.mkdir()
    generate(d, "server")
    for name in ("actor", "alice", "bob", "carol"):
        public, _ = generate(d, name)
        shutil.copy(public, allowed / public.name)
    for name, folder in (("ops", "operators"), ("remote", "actors")):  # role folders
        (d / folder).mkdir()
        public, _ = generate(d, name)
        shutil.copy(public, d / folder / public.name)
    generate(d, "mallory")  # a valid key pair that is not allowed
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def secure(keys):
    from conftest import Deployment

    config = tiny_config(
        "secure",
        deployment={
            "endpoint": "tcp://127.0.0.1:0",
            "heartbeat_s": 0.3,
            "stop_timeout_s": 3,
            "curve_server_key": str(keys / "server.key_secret"),
            "curve_allowed": str(keys / "allowed"),
            "curve_actor_key": str(keys / "actor.key_secret"),
            "curve_operators": str(keys / "operators"),
            "curve_actors": str(keys / "actors"),
            "max_inflight_per_client": 4,
            "max_inflight": 64,
        },
        solver={"config": {"threads": 1}},
        http={"config": {"port": free_port()}},
    )
    d = Deployment(config, "secure", curve=client_keys(keys / "alice.key_secret", keys / "server.key"))
    d.env["SPECMEMO_CLIENT_KEY"] = str(keys / "alice.key_secret")
    d.env["SPECMEMO_SERVER_PUBLIC"] = str(keys / "server.key")
    try:
        yield d.wait_ready()
    finally:
        d.cleanup()


def test_an_allowed_key_calls_and_the_spawned_actor_registered_with_its_key(secure, keys):
    with Client(secure.endpoint, timeout=5, curve=client_keys(keys / "alice.key_secret", keys / "server.key")) as c:
        assert c.call("echo", "echo", data="secret").data == "secret"
    assert "CURVE on: 6 allowed keys (1 operator, 2 actor)" in secure.log.read_text()


@pytest.mark.parametrize("who", ["plain", "mallory"])
def test_a_client_without_an_allowed_key_cannot_call_anything(secure, keys, who):
    curve = None if who == "plain" else client_keys(keys / "mallory.key_secret", keys / "server.key")
    with Client(secure.endpoint, timeout=1.0, curve=curve) as c:
        with pytest.raises(DeadlineExceeded):
            c.ping()


def _ready_as(keys, key_name: str, endpoint: str, actor: bytes, wait_ms: int):
    """Send READY for `actor` from a raw DEALER holding key `key_name`; the reply, or None."""
    from specmemo.protocol.curve import apply_client

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    apply_client(sock, client_keys(keys / f"{key_name}.key_secret", keys / "server.key"))
    sock.connect(endpoint)
    try:
        sock.send_multipart(encode(Command.READY, actor, Header(id=1), {"kind": "echo", "pid": os.getpid()}))
        return decode(sock.recv_multipart()) if sock.poll(wait_ms) else None
    finally:
        sock.close()


def test_an_actor_without_an_allowed_key_cannot_register(secure, keys):
    assert _ready_as(keys, "mallory", secure.endpoint, b"intruder", 1000) is None  # no handshake, no answer
    with Client(secure.endpoint, timeout=5, curve=client_keys(keys / "alice.key_secret", keys / "server.key")) as c:
        assert "intruder" not in {a.name for a in c.actors()}


def test_a_live_actors_name_cannot_be_taken(echo_deployment):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(echo_deployment.endpoint)
    try:
        sock.send_multipart(encode(Command.READY, b"echo", Header(id=7), {"kind": "echo", "pid": os.getpid()}))
        assert sock.poll(5000)
        msg = decode(sock.recv_multipart())
        assert msg.command == Command.ERROR and isinstance(error_from_wire(msg.body), Unauthorized)
    finally:
        sock.close()
    with echo_deployment.client() as c:
        assert c.call("echo", "echo", data=1).data == 1


def test_the_run_directory_is_private(echo_deployment):
    mode = stat.S_IMODE(echo_deployment.run_dir.stat().st_mode)
    assert mode == 0o700


def _as(keys, name: str, endpoint: str, **kw) -> Client:
    return Client(endpoint, curve=client_keys(keys / f"{name}.key_secret", keys / "server.key"), **kw)


def test_a_client_key_is_refused_operator_methods_before_any_handler_runs(secure, keys):
    with _as(keys, "ops", secure.endpoint, timeout=5) as ops:
        before = ops.call("kernel", "metrics").actors["echo"].requests
        assert isinstance(ops.call("echo", "metrics").values, dict)  # an operator may
        mid = ops.call("kernel", "metrics").actors["echo"].requests
        assert mid == before + 1  # the operator's own call was routed
        with _as(keys, "alice", secure.endpoint, timeout=5) as alice:
            assert alice.call("echo", "echo", data=3).data == 3  # a client method
            assert any(a.name == "echo" for a in alice.actors())  # the registry: client
            for actor, method in (("kernel", "metrics"), ("echo", "metrics")):
                with pytest.raises(Unauthorized, match="operator key"):
                    alice.call(actor, method)
        # the refused echo.metrics never reached the echo actor: one request more (alice's echo)
        assert ops.call("kernel", "metrics").actors["echo"].requests == mid + 1


def test_every_privileged_method_is_refused_to_a_client_key_and_reaches_no_actor(secure, keys):
    """The method table enumerated: a client key calling an operator or an actor-only method of
    any actor kind is refused before routing; an operator key may call the operator ones."""
    from test_security_roles import ACTOR_ONLY, BODIES, OPERATOR

    with _as(keys, "ops", secure.endpoint, timeout=10) as ops, _as(keys, "alice", secure.endpoint, timeout=10) as alice:
        names = {a.kind: a.name for a in ops.actors()}
        before = ops.call("kernel", "metrics").actors
        for method in sorted(OPERATOR | ACTOR_ONLY):
            kind, bare = method.split(".")
            targets = ["kernel"] if kind == "kernel" else sorted(names.values()) if kind == "actor" else [names[kind]]
            for actor in targets:
                with pytest.raises(Unauthorized):
                    alice.call(actor, bare, **BODIES.get(method, {}))
        after = ops.call("kernel", "metrics").actors
        assert {a: row.requests for a, row in after.items()} == {a: row.requests for a, row in before.items()}
        for method in sorted(OPERATOR - {"kernel.metrics"}):  # the operator's are its to call
            kind, bare = method.split(".")
            ops.call(names[kind] if kind != "actor" else "echo", bare)


def test_status_with_metrics_needs_an_operator_key(secure, keys):
    import subprocess
    import sys

    def status(name: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "specmemo.deploy.cli",
                "status",
                "--endpoint",
                secure.endpoint,
                "--curve-key",
                str(keys / f"{name}.key_secret"),
                "--server-key",
                str(keys / "server.key"),
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=secure.env,
        )

    ops = status("ops", "--metrics")
    assert ops.returncode == 0 and "P99_MS" in ops.stdout and "GAUGES" in ops.stdout, ops.stderr
    alice = status("alice", "--metrics")
    assert alice.returncode != 0 and "Unauthorized" in alice.stdout + alice.stderr
    plain = status("alice")  # the registry without the kernel's counters
    assert plain.returncode == 0 and "echo" in plain.stdout and "P99_MS" not in plain.stdout, plain.stderr


def test_a_client_key_cannot_register_an_actor(secure, keys):
    msg = _ready_as(keys, "alice", secure.endpoint, b"impostor", 5000)
    assert msg is not None and msg.command == Command.ERROR
    err = error_from_wire(msg.body)
    assert isinstance(err, Unauthorized) and "actor key" in str(err)
    with _as(keys, "ops", secure.endpoint, timeout=5) as c:
        assert "impostor" not in {a.name for a in c.actors()}


def test_an_actor_on_another_host_registers_with_a_key_from_curve_actors(secure, keys):
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "specmemo.actors.run",
            "--kind",
            "echo",
            "--name",
            "remote",
            "--endpoint",
            secure.endpoint,
            "--curve-key",
            str(keys / "remote.key_secret"),
            "--server-key",
            str(keys / "server.key"),
        ],
        env=secure.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        with _as(keys, "alice", secure.endpoint, timeout=5) as alice:
            deadline = time.monotonic() + 60
            while not any(a.name == "remote" and a.state == "external" for a in alice.actors()):
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
                time.sleep(0.1)
            # an instance whose kind this client was not told: the reply map as it came
            assert alice.call("remote", "echo", data="over tcp") == {"data": "over tcp"}
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_in_flight_limit_counts_every_connection_of_one_key(secure, keys):
    import trio

    from specmemo.protocol import Overloaded
    from specmemo.protocol.client import AsyncClient

    outcomes: list[str] = []
    alice = client_keys(keys / "alice.key_secret", keys / "server.key")

    async def flood() -> None:
        async def one(c: AsyncClient) -> None:
            try:
                await c.call("echo", "sleep", seconds=1.0)
                outcomes.append("ok")
            except Overloaded as exc:
                assert "max_inflight_per_client = 4, counted per key" in str(exc)
                outcomes.append("refused")

        async with (
            AsyncClient(secure.endpoint, timeout=30, curve=alice) as a,
            AsyncClient(secure.endpoint, timeout=30, curve=alice) as b,
        ):
            async with trio.open_nursery() as nursery:
                for i in range(8):  # 4 on each of two connections
                    nursery.start_soon(one, a if i % 2 else b)
                await trio.sleep(0.3)
                with _as(keys, "bob", secure.endpoint, timeout=10) as bob:  # another key is served
                    assert bob.call("echo", "echo", data=7).data == 7

    trio.run(flood)
    assert sorted(outcomes) == ["ok"] * 4 + ["refused"] * 4


def _p99_ms(client: Client, calls: int) -> tuple[float, int]:
    """p99 latency (ms) of `calls` echo calls one after another, and how many were refused."""
    import time

    from specmemo.protocol import Overloaded

    latencies, refused = [], 0
    for i in range(calls):
        t0 = time.perf_counter()
        try:
            assert client.call("echo", "echo", data=i).data == i
        except Overloaded:
            refused += 1
        latencies.append(time.perf_counter() - t0)
    return float(np.percentile(latencies, 99)) * 1e3, refused


def test_a_flood_of_64_connections_on_one_key_leaves_another_client_served(secure, keys):
    """64 connections on one key call without pause (each refused call is sent again when its
    Overloaded arrives). Counted per key, they hold at most 4 calls in the echo actor (of its 64),
    so a client with another key is never refused, and none of its calls waits behind the flood.
    Its p99 against the 3x goal is measured by bench/flood.py (docs/benchmarks.md): here only a
    bound that starvation (a call queued behind the flood's 0.2 s sleeps) would break."""
    import json
    import subprocess
    import sys
    import time

    here = Path(__file__).parent
    with _as(keys, "bob", secure.endpoint, timeout=10) as bob, _as(keys, "ops", secure.endpoint, timeout=10) as ops:
        _p99_ms(bob, 100)  # warm
        before, _ = _p99_ms(bob, 400)
        flood = subprocess.Popen(
            [
                sys.executable,
                str(here / "flood_clients.py"),
                secure.endpoint,
                str(keys / "carol.key_secret"),
                str(keys / "server.key"),
                "64",
                "10",
            ],
            env=secure.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 30
            while next(a for a in ops.actors() if a.name == "echo").inflight < 4:  # flooding
                assert flood.poll() is None and time.monotonic() < deadline, flood.stderr.read()
                time.sleep(0.05)
            loaded, refused = _p99_ms(bob, 400)
            peak = max(next(a for a in ops.actors() if a.name == "echo").inflight for _ in range(20))
        finally:
            out, err = flood.communicate(timeout=60)
        after, _ = _p99_ms(bob, 400)
    counts = json.loads(out.strip().splitlines()[-1])
    print(f"bob's p99: {before:.2f} / {loaded:.2f} / {after:.2f} ms (before / flood / after); flood: {counts}")
    assert refused == 0
    assert peak <= 4  # the key's limit held in the actor
    assert counts["refused"] > 10 * counts["accepted"] > 0, counts  # the flood was refused, not served
    assert loaded < 10 * max(before, after, 1.0), (before, loaded, after)


def test_another_keys_session_and_matrix_are_untouchable_over_curve(secure, keys):
    from specmemo.native import matrices
    from specmemo.protocol import NotFound

    s = matrices.generate("random", 60, seed=3).tocsr()
    x = np.ones(60)
    with _as(keys, "alice", secure.endpoint, timeout=60) as alice, _as(keys, "bob", secure.endpoint, timeout=60) as bob:
        session = alice.open_session()
        alice.register_matrix(s, id="private")
        for call in (
            lambda: bob.ask(session, "hello", max_new_tokens=4),
            lambda: bob.close_session(session),
            lambda: bob.matvec("private", x),
            lambda: bob.solve("private", x),
        ):
            with pytest.raises(NotFound):  # as if it did not exist
                call()
        assert bob.drop_matrix("private") is False
        assert alice.ask(session, "hello", max_new_tokens=4).token_ids  # the owner's still work
        assert np.allclose(alice.matvec("private", x), s @ x)
        alice.close_session(session)
        assert alice.drop_matrix("private") is True
