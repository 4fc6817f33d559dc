"""Prometheus metrics of the kernel and the actors, and `specmemo status` showing them."""

from __future__ import annotations

import random
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

from specmemo.native import matrices
from specmemo.protocol import UnknownMethod

CONFIG = """
[deployment]
name = "metrics"
metrics_port = {port}
heartbeat_s = 0.3
stop_timeout_s = 3

[actors.echo]
kind = "echo"

[actors.solver]
kind = "solver"
[actors.solver.config]
threads = 1
"""


@pytest.fixture(scope="module")
def deployment():
    from conftest import Deployment

    port = random.randint(20000, 40000)
    d = Deployment(CONFIG.format(port=port), "metrics")
    d.port = port
    try:
        yield d.wait_ready(["echo", "solver"])
    finally:
        d.cleanup()


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def test_the_kernel_counts_requests_errors_and_latency_per_actor(deployment):
    with deployment.client() as c:
        for i in range(20):
            c.call("echo", "echo", data=i)
        with pytest.raises(UnknownMethod):
            c.call("echo", "nope")
        counted = c.call("kernel", "metrics").actors["echo"]
    assert counted.requests >= 21
    assert counted.errors.get("UnknownMethod") == 1
    assert 0 < counted.p50_ms <= counted.p99_ms
    text = _scrape(deployment.port)
    assert 'specmemo_requests_total{actor="echo",method="echo"}' in text
    assert 'specmemo_latency_seconds_bucket{actor="echo"' in text


def test_the_solver_publishes_iterations_and_gflops(deployment):
    s = matrices.generate("convection2d", 2500, seed=1)
    with deployment.client() as c:
        rep = c.register_matrix(s)
        out = c.solve(rep.id, np.ones(s.shape[0]), alpha=1.0)
        values = c.call("solver", "metrics").values
    assert values["solve_iterations"] == out.iterations and values["solve_gflops"] > 0
    solver_port = deployment.port + 2  # echo is the first actor, solver the second
    assert "specmemo_solve_iterations" in _scrape(solver_port)


def test_status_shows_calls_latency_and_gauges(deployment):
    out = subprocess.run(
        [sys.executable, "-m", "specmemo.deploy.cli", "status", "--metrics"],
        env=deployment.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "P50_MS" in out.stdout and "GAUGES" in out.stdout and "solve_iterations=" in out.stdout


def test_kernel_counters_reach_both_the_status_snapshot_and_the_scrape():
    from prometheus_client import generate_latest

    from specmemo.actors.metrics import KernelMetrics
    from specmemo.protocol.methods import ActorCounts

    m = KernelMetrics()
    for method in ("echo", "echo", "sleep"):
        m.count_request("echo", method)
    m.count_error("echo", "BadRequest")
    m.count_heartbeat_miss("solver")
    m.observe("echo", 0.002)
    snap = m.snapshot()
    assert snap["echo"] == ActorCounts(requests=3, errors={"BadRequest": 1}, heartbeat_misses=0, p50_ms=2.0, p99_ms=2.0)
    assert snap["solver"] == ActorCounts(requests=0, errors={}, heartbeat_misses=1)  # no call: no latency
    text = generate_latest(m.registry).decode()
    for line in (
        'specmemo_requests_total{actor="echo",method="echo"} 2.0',
        'specmemo_errors_total{actor="echo",code="BadRequest"} 1.0',
        'specmemo_heartbeat_misses_total{actor="solver"} 1.0',
        'specmemo_latency_seconds_count{actor="echo"} 1.0',
    ):
        assert line in text, line
