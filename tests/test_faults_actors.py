"""SIGKILL under load: draft, verifier, memory and solver killed again and again while clients
call echo, matvec, solve and chat. No caller hangs, results stay right, the memory actor ends
with no block leased, a killed memory actor is survived, a killed kernel leaves no process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from specmemo.deploy.faults import killer
from specmemo.deploy.load import CHAT_MESSAGES, CHAT_TOKENS, Tally, beyond_prefix_stores, leaked_bytes, mixed_calls
from specmemo.deploy.local import actor_rows, pid_alive
from specmemo.protocol import ActorDied

LONG = os.environ.get("SPECMEMO_LONG") == "1"
GAMMA = 3


def kill_under_load(d, chat_expected, rounds: int, clients: int = 4):
    tally, kills, stop = Tally(), [], threading.Event()
    load = [
        threading.Thread(
            target=mixed_calls,
            args=(d.endpoint, seed, 10**6, tally),
            kwargs={"stop": stop, "chat_expected": chat_expected, "timeout": 30},
        )
        for seed in range(clients)
    ]
    for t in load:
        t.start()
    try:
        killer(d.endpoint, ["draft", "verifier", "memory", "solver"], rounds, 0.3, kills)
    finally:
        stop.set()
        for t in load:
            t.join(120)
    assert not any(t.is_alive() for t in load), "a client thread hangs"
    return tally, kills


def test_actors_killed_under_load_fail_calls_cleanly_come_back_and_leak_no_block(soak_deployment, chat_expected):
    tally, kills = kill_under_load(soak_deployment, chat_expected, rounds=2, clients=3)
    assert tally.hung == 0, "a call outlived its deadline"
    assert not tally.wrong, tally.wrong[:5]
    # In flight at a kill: ActorDied. A matrix of a restarted solver: NotFound (registered again).
    # A chat waiting for a restarting draft past its deadline: DeadlineExceeded.
    assert set(tally.errors) <= {"ActorDied", "NotFound", "DeadlineExceeded"}, tally.errors
    assert tally.ok > len(kills), "the load made no progress between kills"
    back = {}
    for name, seconds in kills:
        back[name] = max(back.get(name, 0.0), seconds)
    print(f"{tally.calls} calls, errors {dict(tally.errors)}; back after SIGKILL (max s): {back}")
    # Back and serving: memory and solver in about a second on a quiet machine, the torch actors
    # (forked by the zygote) in a fraction of one; times are reported, not asserted, since they
    # stretch with whatever else the machine runs (docs/reliability.md). The killer gives up
    # (TimeoutError) when an actor is not back in 120 s.
    assert set(back) == {"draft", "verifier", "memory", "solver"}
    with soak_deployment.client(timeout=10) as c:
        usage = leaked_bytes(c)
        rows = actor_rows(c)
    assert beyond_prefix_stores(usage) == 0 and not usage.sessions, usage
    assert usage.leases == {"draft": "draft", "target": "verifier"}
    assert rows["echo"].restarts == 0 and all(rows[n].restarts >= 2 for n in back)


def test_the_memory_actor_killed_mid_turn_fails_the_turn_and_the_session_goes_on(soak_deployment, chat_expected):
    message = CHAT_MESSAGES[0]
    with soak_deployment.client(timeout=60) as c:
        session = c.open_session()
        stream = c.chat(session, "a long turn that will not finish", max_new_tokens=400, gamma=GAMMA)
        next(stream)
        pid = actor_rows(c)["memory"].pid
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ActorDied):
            list(stream)
        assert time.monotonic() - t0 < 5
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the holders register again with the new process
            try:
                if len(c.usage().leases) == 2:
                    break
            except ActorDied:
                pass
            time.sleep(0.05)
        assert c.usage().leases == {"draft": "draft", "target": "verifier"}
        again = c.ask(session, "and now?", max_new_tokens=6, gamma=GAMMA)
        assert len(again.token_ids) >= 1 and c.usage().sessions[session] > 0
        fresh = c.open_session()
        assert c.ask(fresh, message, max_new_tokens=CHAT_TOKENS).token_ids == chat_expected[message]
        c.close_session(session)
        c.close_session(fresh)
        usage = c.usage()
    assert beyond_prefix_stores(usage) == 0 and not usage.sessions


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(not LONG, reason="long run: SPECMEMO_LONG=1")
def test_each_actor_killed_twenty_times_under_load(soak_deployment, chat_expected):
    tally, kills = kill_under_load(soak_deployment, chat_expected, rounds=20, clients=8)
    back = {n: round(max(s for m, s in kills if m == n), 2) for n, _ in kills}
    print(f"{tally.calls} calls, errors {dict(tally.errors)}; back after SIGKILL (max s): {back}")
    assert tally.hung == 0 and not tally.wrong
    assert set(tally.errors) <= {"ActorDied", "NotFound", "DeadlineExceeded"}, tally.errors
    with soak_deployment.client(timeout=10) as c:
        usage = leaked_bytes(c)
    assert beyond_prefix_stores(usage) == 0 and not usage.sessions


KERNEL_CONFIG = """
[deployment]
name = "{name}"
heartbeat_s = 0.3
heartbeat_misses = 5
stop_timeout_s = 3

[actors.echo]
kind = "echo"

[actors.memory]
kind = "memory"

[actors.solver]
kind = "solver"
"""


def test_a_killed_kernel_leaves_no_actor_running_and_the_deployment_starts_again(start_deployment):
    d = start_deployment(KERNEL_CONFIG.format(name="kk"), "kk", ["echo", "memory", "solver"])
    with d.client(timeout=10) as c:
        pids = {n: r.pid for n, r in actor_rows(c).items()}
    d.proc.kill()
    d.proc.wait(10)
    t0 = time.monotonic()
    while any(pid_alive(p) for p in pids.values()) and time.monotonic() - t0 < 10:
        time.sleep(0.05)
    gone_after = time.monotonic() - t0
    assert not [n for n, p in pids.items() if pid_alive(p)], f"orphans after {gone_after:.1f} s"
    print(f"every actor exited {gone_after:.2f} s after the kernel was killed")
    # The same run root again: the stale pid file and socket of the killed kernel are reclaimed.
    d.start()
    d.wait_ready(["echo"], timeout=60)
    with d.client(timeout=10) as c:
        assert c.call("echo", "echo", data=1).data == 1


def test_the_memory_actor_process_starts_without_importing_torch():
    # A restarted memory actor is back in about a second only because it skips torch (seconds).
    code = (
        "import sys, specmemo.actors.run, specmemo.actors.memory; print(sorted({'torch', "
        "'transformers'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
