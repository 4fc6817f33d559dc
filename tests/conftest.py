"""Shared fixtures: real deployments started as real processes, on short ipc paths."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow],
                          print_blob=True)
settings.load_profile("ci")

REPO = Path(__file__).resolve().parent.parent


def raw_dealer(endpoint: str, ident: bytes | None = None, timeout_ms: int = -1):
    """A bare pyzmq DEALER on ``endpoint``, for tests that speak the wire protocol by hand."""
    import zmq
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
    if ident:
        sock.setsockopt(zmq.ROUTING_ID, ident)
    sock.connect(endpoint)
    return sock


def load_bench(name: str):
    """Import ``bench/<name>.py`` (scripts, not a package) as the module ``<name>_bench``."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"{name}_bench", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses in the module look themselves up here
    spec.loader.exec_module(module)
    return module


class Deployment:
    """A ``specmemo up`` process with its own run root; stopped (and checked clean) on exit."""

    def __init__(self, config_text: str, name: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sm", dir="/tmp"))
        self.config = self.root / "deploy.toml"
        self.config.write_text(config_text)
        self.name = name
        self.env = {**os.environ, "SPECMEMO_RUN_ROOT": str(self.root / "run")}
        self.log = self.root / "up.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "specmemo.deploy.cli", "up", "--config", str(self.config)],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=self.env)
        self.endpoint = ""

    @property
    def run_dir(self) -> Path:
        return self.root / "run" / self.name

    def wait_ready(self, actors: list[str], timeout: float = 60.0) -> "Deployment":
        from specmemo.protocol import Client
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"deployment exited early:\n{self.log.read_text()}")
            ep = self.run_dir / "endpoint"
            if ep.exists() and ep.read_text().strip():
                self.endpoint = ep.read_text().strip()
                try:
                    with Client(self.endpoint, timeout=2) as c:
                        table = {a["name"]: a for a in c.actors()}
                    if all(table.get(a, {}).get("state") == "ready" for a in actors):
                        return self
                except Exception:
                    pass
            time.sleep(0.1)
        raise TimeoutError(f"actors {actors} not ready in {timeout} s:\n{self.log.read_text()}")

    def client(self, **kw):
        from specmemo.protocol import Client
        return Client(self.endpoint, **kw)

    def actor_pid(self, name: str) -> int:
        with self.client(timeout=5) as c:
            return next(a["pid"] for a in c.actors() if a["name"] == name)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def start_deployment() -> Iterator:
    started: list[Deployment] = []

    def start(config_text: str, name: str, actors: list[str], timeout: float = 60.0) -> Deployment:
        d = Deployment(config_text, name)
        started.append(d)
        return d.wait_ready(actors, timeout)

    yield start
    for d in started:
        d.cleanup()


ECHO_CONFIG = """
[deployment]
name = "{name}"
heartbeat_s = 0.3
heartbeat_misses = 5
restart_intensity = {intensity}
restart_period_s = 30
backoff_s = 0.05
stop_timeout_s = 3

[actors.echo]
kind = "echo"
"""


@pytest.fixture
def echo_deployment(start_deployment):
    return start_deployment(ECHO_CONFIG.format(name="echo", intensity=20), "echo", ["echo"])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False
