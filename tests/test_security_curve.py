"""CURVE on tcp: only allowed keys can call or register; names of live actors cannot be taken."""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import msgpack
import pytest
import zmq

from specmemo.protocol import Client, DeadlineExceeded, Unauthorized
from specmemo.protocol.curve import client_keys, generate
from specmemo.protocol.errors import error_from_wire
from specmemo.protocol.wire import Command, Header, decode, encode


@pytest.fixture(scope="module")
def keys():
    d = Path(tempfile.mkdtemp(prefix="smkeys", dir="/tmp"))
    allowed = d / "allowed"
    allowed.mkdir()
    generate(d, "server")
    for name in ("actor", "alice"):
        public, _ = generate(d, name)
        shutil.copy(public, allowed / public.name)
    generate(d, "mallory")                      # a valid key pair that is not allowed
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def secure(keys):
    from conftest import Deployment
    config = f"""
[deployment]
name = "secure"
endpoint = "tcp://127.0.0.1:0"
heartbeat_s = 0.3
stop_timeout_s = 3
curve_server_key = "{keys / 'server.key_secret'}"
curve_allowed = "{keys / 'allowed'}"
curve_actor_key = "{keys / 'actor.key_secret'}"

[actors.echo]
kind = "echo"
"""
    d = Deployment(config, "secure")
    d.env["SPECMEMO_CLIENT_KEY"] = str(keys / "alice.key_secret")
    d.env["SPECMEMO_SERVER_PUBLIC"] = str(keys / "server.key")
    try:
        _wait(d, keys)
        yield d
    finally:
        d.cleanup()


def _wait(d, keys, timeout=60.0):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ep = d.run_dir / "endpoint"
        if ep.exists() and ep.read_text().startswith("tcp://"):
            d.endpoint = ep.read_text().strip()
            try:
                with Client(d.endpoint, timeout=2, curve=client_keys(keys / "alice.key_secret", keys / "server.key")) as c:
                    if any(a["state"] == "ready" for a in c.actors()):
                        return
            except Exception:
                pass
        time.sleep(0.1)
    raise TimeoutError(d.log.read_text())


def test_an_allowed_key_calls_and_the_spawned_actor_registered_with_its_key(secure, keys):
    with Client(secure.endpoint, timeout=5, curve=client_keys(keys / "alice.key_secret", keys / "server.key")) as c:
        assert c.call("echo", "echo", data="secret")["data"] == "secret"
    assert "CURVE on: 2 allowed keys" in secure.log.read_text()


@pytest.mark.parametrize("who", ["plain", "mallory"])
def test_a_client_without_an_allowed_key_cannot_call_anything(secure, keys, who):
    curve = None if who == "plain" else client_keys(keys / "mallory.key_secret", keys / "server.key")
    with Client(secure.endpoint, timeout=1.0, curve=curve) as c:
        with pytest.raises(DeadlineExceeded):
            c.ping()


def test_an_actor_without_an_allowed_key_cannot_register(secure, keys):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    mallory = client_keys(keys / "mallory.key_secret", keys / "server.key")
    sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = mallory["secret"], mallory["public"], mallory["server"]
    sock.connect(secure.endpoint)
    try:
        sock.send_multipart(encode(Command.READY, b"intruder", Header(id=1), {"kind": "echo", "pid": 1}))
        assert sock.poll(1000) == 0
    finally:
        sock.close()
    with Client(secure.endpoint, timeout=5, curve=client_keys(keys / "alice.key_secret", keys / "server.key")) as c:
        assert "intruder" not in {a["name"] for a in c.actors()}


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
        assert c.call("echo", "echo", data=1)["data"] == 1


def test_the_run_directory_is_private(echo_deployment):
    mode = stat.S_IMODE(echo_deployment.run_dir.stat().st_mode)
    assert mode == 0o700
