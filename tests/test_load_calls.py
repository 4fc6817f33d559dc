"""Many clients at once: every reply arrives exactly once and right, and a full actor answers
``Overloaded`` at once instead of queueing without bound."""

from __future__ import annotations

import os
import threading
import time

import pytest
from conftest import ECHO_CONFIG

from specmemo.deploy.load import Tally, beyond_prefix_stores, leaked_bytes, mixed_calls, pipelined_echo

LONG = os.environ.get("SPECMEMO_LONG") == "1"


def run_clients(d, clients: int, calls: int, chat_expected, ops=None) -> tuple[Tally, float]:
    tally = Tally()
    threads = [
        threading.Thread(
            target=mixed_calls,
            args=(d.endpoint, seed, calls, tally),
            kwargs={"chat_expected": chat_expected, "ops": ops, "timeout": 60},
        )
        for seed in range(clients)
    ]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return tally, time.monotonic() - t0


def check_clean(d, tally: Tally, expected_calls: int) -> None:
    assert tally.calls == expected_calls
    assert not tally.wrong, tally.wrong[:5]
    with d.client(timeout=10) as c:
        usage = leaked_bytes(c)
    assert not tally.errors, (tally.errors, usage)  # the memory actor's state explains OverBudget
    assert tally.hung == 0
    assert beyond_prefix_stores(usage) == 0 and not usage.sessions, usage


def test_sixteen_clients_of_mixed_calls_get_every_result_right(soak_deployment, chat_expected):
    ops = {"echo": 0.5, "matvec": 0.25, "solve": 0.15, "chat": 0.1}
    tally, seconds = run_clients(soak_deployment, 16, 50, chat_expected, ops)
    check_clean(soak_deployment, tally, 16 * 50)
    print(
        f"16 x 50 mixed calls in {seconds:.2f} s ({tally.calls / seconds:.0f} calls/s): "
        + ", ".join(f"{op} {tally.percentiles(op)}" for op in ops)
    )


def test_pipelined_calls_on_four_sockets_are_answered_exactly_once(soak_deployment):
    reports = []

    def one() -> None:
        reports.append(pipelined_echo(soak_deployment.endpoint, 2000, window=64))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(reports) == 4
    for r in reports:
        assert (r.sent, r.answered, r.lost, r.duplicated, r.wrong) == (2000, 2000, 0, 0, 0), r
        assert not r.errors
    rate = sum(r.sent for r in reports) / max(r.seconds for r in reports)
    print(f"4 sockets x 2000 pipelined echo calls (window 64): {rate:.0f} calls/s")


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(not LONG, reason="long run: SPECMEMO_LONG=1")
def test_sixty_four_clients_of_five_hundred_mixed_calls_get_every_result_right(soak_deployment, chat_expected):
    ops = {"echo": 0.5, "matvec": 0.25, "solve": 0.15, "chat": 0.1}
    tally, seconds = run_clients(soak_deployment, 64, 500, chat_expected, ops)
    check_clean(soak_deployment, tally, 64 * 500)
    print(
        f"64 x 500 mixed calls in {seconds:.2f} s ({tally.calls / seconds:.0f} calls/s): "
        + ", ".join(f"{op} {tally.percentiles(op)}" for op in ops)
    )


def test_a_full_actor_answers_overloaded_at_once_and_serves_what_it_accepted(start_deployment):
    config = ECHO_CONFIG.format(name="full", intensity=5).replace(
        "stop_timeout_s = 3", "stop_timeout_s = 3\nmax_inflight = 8"
    )
    d = start_deployment(config, "full", ["echo"])
    r = pipelined_echo(d.endpoint, 40, window=40, method="sleep", params=lambda i: {"seconds": 0.5})
    assert r.lost == r.duplicated == 0
    assert len(r.latencies) == 8 and r.errors == {"Overloaded": 32}, r
    assert max(r.error_latencies) < 0.25, "Overloaded must come back at once, not after a wait"
    assert min(r.latencies) >= 0.5
    print(
        f"Overloaded answered within {max(r.error_latencies) * 1e3:.1f} ms; the 8 accepted calls "
        f"took {min(r.latencies):.3f}-{max(r.latencies):.3f} s"
    )
    with d.client() as c:
        assert next(a for a in c.actors() if a.name == "echo").inflight == 0
        assert c.call("echo", "echo", data="after").data == "after"
