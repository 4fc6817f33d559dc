"""Prometheus metrics of one process (the kernel or an actor), and a plain snapshot for `status`.

Each process owns one registry. The kernel counts what it routes (requests, errors by code,
latency from forwarding a request to its final reply, in flight, restarts, heartbeat misses);
an actor adds the gauges of its domain (KV budget/live/peak and γ for the memory actor,
tokens/s and accepted per step for the verifier, iterations and GFLOP/s for the solver).
With ``metrics_port`` set in the deployment, each process serves its registry over HTTP on
127.0.0.1 (the kernel on that port, the n-th actor on port + n).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict, deque
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from specmemo.protocol.kernel_messages import ActorCounts

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class KernelMetrics:
    """The kernel's counters. Requests, errors and latency are counted in plain dicts on the
    routing path and turned into Prometheus families only when scraped: prometheus-client's
    labelled children take a lock per update, several µs per routed message at 20k msgs/s."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._requests: dict[tuple[str, str], int] = defaultdict(int)
        self._errors: dict[tuple[str, str], int] = defaultdict(int)
        self._latency: dict[str, list[float]] = {}  # actor -> bucket counts + [sum]
        self._heartbeat_misses: dict[str, int] = defaultdict(int)
        self.inflight = Gauge("specmemo_inflight", "Calls in flight", ["actor"], registry=r)
        self.restarts = Gauge("specmemo_restarts", "Restarts of a supervised actor", ["actor"], registry=r)
        r.register(_RoutedCollector(self))
        # The last latencies per actor (a ring), for p50/p99 at a glance.
        self._recent: dict[str, deque] = {}

    def count_request(self, actor: str, method: str) -> None:
        self._requests[actor, method] += 1

    def count_error(self, actor: str, code: str) -> None:
        self._errors[actor, code] += 1

    def count_heartbeat_miss(self, actor: str) -> None:
        self._heartbeat_misses[actor] += 1

    def observe(self, actor: str, seconds: float) -> None:
        counts = self._latency.get(actor)
        if counts is None:
            counts = self._latency[actor] = [0.0] * (len(LATENCY_BUCKETS) + 2)
            self._recent[actor] = deque(maxlen=2048)
        counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # the last bucket but one is +Inf
        counts[-1] += seconds
        self._recent[actor].append(seconds)

    def snapshot(self) -> dict[str, ActorCounts]:
        """Per actor: requests, errors (by code), p50/p99 ms of recent calls, heartbeat misses
        (read from the plain counters: no Prometheus rendering for `status`)."""
        out: dict[str, ActorCounts] = {}

        def row(actor: str) -> ActorCounts:
            return out.setdefault(actor, ActorCounts())

        for (actor, _method), n in list(self._requests.items()):
            row(actor).requests += n
        for (actor, code), n in list(self._errors.items()):
            row(actor).errors[code] = n
        for actor, n in list(self._heartbeat_misses.items()):
            row(actor).heartbeat_misses = n
        for actor, ring in list(self._recent.items()):
            window = sorted(ring)
            if window:
                row(actor).p50_ms = 1000 * window[len(window) // 2]
                row(actor).p99_ms = 1000 * window[min(len(window) - 1, int(len(window) * 0.99))]
        return out


class _RoutedCollector:
    """Renders the kernel's plain counters as Prometheus families at scrape time."""

    def __init__(self, metrics: KernelMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Any]:
        requests = CounterMetricFamily("specmemo_requests", "Requests routed to an actor", labels=["actor", "method"])
        for labels, n in list(self.m._requests.items()):
            requests.add_metric(list(labels), n)
        errors = CounterMetricFamily("specmemo_errors", "Error replies by code", labels=["actor", "code"])
        for labels, n in list(self.m._errors.items()):
            errors.add_metric(list(labels), n)
        misses = CounterMetricFamily("specmemo_heartbeat_misses", "Actors declared dead for silence", labels=["actor"])
        for actor, n in list(self.m._heartbeat_misses.items()):
            misses.add_metric([actor], n)
        latency = HistogramMetricFamily(
            "specmemo_latency_seconds", "Request to final reply, as routed", labels=["actor"]
        )
        for actor, counts in list(self.m._latency.items()):
            running, buckets = 0.0, []
            for le, count in zip([*map(floatToGoString, LATENCY_BUCKETS), "+Inf"], counts):
                running += count
                buckets.append((le, running))
            latency.add_metric([actor], buckets, sum_value=counts[-1])
        yield from (requests, errors, misses, latency)


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
            gauge = self._gauges[name] = Gauge(f"specmemo_{name}", help or name, ["actor"], registry=self.registry)
        gauge.labels(self.actor).set(value)
        self._values[name] = float(value)

    def values(self) -> dict[str, float]:
        return dict(self._values)


def serve(registry: CollectorRegistry, port: int) -> None:
    """Serve ``registry`` on http://127.0.0.1:port/metrics (a daemon thread)."""
    start_http_server(port, addr="127.0.0.1", registry=registry)
