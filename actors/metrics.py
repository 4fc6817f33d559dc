"""Prometheus metrics of one process (the kernel or an actor), and a plain snapshot for `status`.

Each process owns one registry. The kernel counts what it routes (requests, errors by code,
latency from forwarding a request to its final reply, in flight, restarts, heartbeat misses);
an actor adds the gauges of its domain (KV budget/live/peak and γ for the memory actor,
tokens/s and accepted per step for the verifier, iterations and GFLOP/s for the solver).
With ``metrics_port`` set in the deployment, each process serves its registry over HTTP on
127.0.0.1 (the kernel on that port, the n-th actor on port + n).
"""
from __future__ import annotations

from collections import deque
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class KernelMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("specmemo_requests", "Requests routed to an actor", ["actor", "method"], registry=r)
        self.errors = Counter("specmemo_errors", "Error replies by code", ["actor", "code"], registry=r)
        self.latency = Histogram("specmemo_latency_seconds", "Request to final reply, as routed",
                                 ["actor"], buckets=LATENCY_BUCKETS, registry=r)
        self.inflight = Gauge("specmemo_inflight", "Calls in flight", ["actor"], registry=r)
        self.restarts = Gauge("specmemo_restarts", "Restarts of a supervised actor", ["actor"], registry=r)
        self.heartbeat_misses = Counter("specmemo_heartbeat_misses", "Actors declared dead for silence",
                                        ["actor"], registry=r)
        # The last latencies per actor (a ring), for p50/p99 at a glance.
        self._recent: dict[str, deque] = {}
        self._children: dict[tuple, Any] = {}   # labelled children, looked up once per label set

    def count_request(self, actor: str, method: str) -> None:
        child = self._children.get(("r", actor, method))
        if child is None:
            child = self._children["r", actor, method] = self.requests.labels(actor, method)
        child.inc()

    def count_error(self, actor: str, code: str) -> None:
        child = self._children.get(("e", actor, code))
        if child is None:
            child = self._children["e", actor, code] = self.errors.labels(actor, code)
        child.inc()

    def observe(self, actor: str, seconds: float) -> None:
        child = self._children.get(("l", actor))
        if child is None:
            child = self._children["l", actor] = self.latency.labels(actor)
            self._recent[actor] = deque(maxlen=2048)
        child.observe(seconds)
        self._recent[actor].append(seconds)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per actor: requests, errors (by code), p50/p99 ms of recent calls, heartbeat misses."""
        out: dict[str, dict[str, Any]] = {}
        for metric in self.registry.collect():
            for sample in metric.samples:
                actor = sample.labels.get("actor")
                if actor is None or not sample.name.endswith("_total"):
                    continue
                row = out.setdefault(actor, {"requests": 0, "errors": {}, "heartbeat_misses": 0})
                if sample.name == "specmemo_requests_total":
                    row["requests"] += int(sample.value)
                elif sample.name == "specmemo_errors_total":
                    row["errors"][sample.labels["code"]] = int(sample.value)
                elif sample.name == "specmemo_heartbeat_misses_total":
                    row["heartbeat_misses"] = int(sample.value)
        for actor, ring in self._recent.items():
            row = out.setdefault(actor, {"requests": 0, "errors": {}, "heartbeat_misses": 0})
            window = sorted(ring)
            if window:
                row["p50_ms"] = 1000 * window[len(window) // 2]
                row["p99_ms"] = 1000 * window[min(len(window) - 1, int(len(window) * 0.99))]
        return out


class ActorMetrics:
    """Gauges an actor sets about its own domain; `values()` is what `<actor>.metrics` answers."""

    def __init__(self, actor: str) -> None:
        self.actor = actor
        self.registry = CollectorRegistry()
        self._gauges: dict[str, Gauge] = {}
        self._values: dict[str, float] = {}

    def set(self, name: str, value: float, help: str = "") -> None:
        gauge = self._gauges.get(name)
        if gauge is None:
            gauge = self._gauges[name] = Gauge(f"specmemo_{name}", help or name, ["actor"],
                                               registry=self.registry)
        gauge.labels(self.actor).set(value)
        self._values[name] = float(value)

    def values(self) -> dict[str, float]:
        return dict(self._values)


def serve(registry: CollectorRegistry, port: int) -> None:
    """Serve ``registry`` on http://127.0.0.1:port/metrics (a daemon thread)."""
    start_http_server(port, addr="127.0.0.1", registry=registry)
