"""Shared fixtures: real deployments started as real processes, on short ipc paths."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from specmemo.deploy.local import LocalDeployment

settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.load_profile("ci")

REPO = Path(__file__).resolve().parent.parent

# converted weights of the checkpoints tests load go to a directory of this run, not the user's
if "SPECMEMO_CONVERTED" not in os.environ:
    os.environ["SPECMEMO_CONVERTED"] = tempfile.mkdtemp(prefix="specmemo-converted-")
    atexit.register(shutil.rmtree, os.environ["SPECMEMO_CONVERTED"], True)


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
    sys.modules[spec.name] = module  # dataclasses in the module look themselves up here
    spec.loader.exec_module(module)
    return module


#: A ``specmemo up`` process with its own run root, as the product starts one (deploy/local.py).
Deployment = LocalDeployment


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


@pytest.fixture(scope="module")
def soak_deployment():
    """The soak command's deployment (echo, solver and the tiny pair), one per test module."""
    from specmemo.deploy.soak import SOAK_ACTORS, soak_config

    d = Deployment(soak_config("soak"))
    try:
        yield d.wait_ready(list(SOAK_ACTORS), timeout=240)
    finally:
        d.cleanup()


@pytest.fixture(scope="session")
def chat_expected():
    """The in-process engine's greedy replies to the load's chat messages (the actors must match)."""
    from specmemo.deploy.load import chat_reference

    return chat_reference()
