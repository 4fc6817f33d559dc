"""The zygote forks the torch actors: adopted by the kernel, reaped when killed, replaced when
it dies itself, gone with a killed kernel; a forked pair chats exactly like the engine."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from conftest import Deployment

from specmemo.deploy.faults import kill_and_wait
from specmemo.deploy.load import CHAT_MESSAGES, CHAT_TOKENS, chat_reference
from specmemo.deploy.local import actor_rows, pid_alive
from specmemo.deploy.soak import soak_config
from specmemo.deploy.tiny import PAIR

TORCH_ACTORS = ("draft", "verifier")


def stat(pid: int) -> tuple[str, int]:
    """(state letter, parent pid) of a live or zombie process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def why_alive(pid: int) -> str:
    """What a process left behind is doing: its command line, state, parent, signal masks and the
    kernel function it sleeps in (what a rare failure needs to explain itself)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        keep = [
            line
            for line in status
            if line.split(":")[0] in ("State", "PPid", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt", "Threads")
        ]
        wchan = Path(f"/proc/{pid}/wchan").read_text()
        name = Path(f"/proc/{pid}/comm").read_text().strip()  # a forked actor keeps the zygote's cmdline
    except OSError as exc:
        return f"{pid}: gone ({exc})"
    return f"{pid} {name} {cmdline(pid)[:80]!r} {'; '.join(keep)}; wchan {wchan}"


def zygotes(kernel: int, actor_pids: set[int]) -> list[int]:
    """Children of the kernel running the zygote's command line that are not actors."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in actor_pids:
            continue
        try:
            state, parent = stat(int(entry.name))
            if parent == kernel and state != "Z" and "specmemo.actors.zygote" in cmdline(int(entry.name)):
                out.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return out


def gone(pid: int, timeout: float = 10.0) -> bool:
    """The process exited and was reaped (no zombie left)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stat(pid)
        except OSError:
            return True
        time.sleep(0.02)
    return False


def assert_forked(d: Deployment, pid: int) -> None:
    # A plain exec spawn runs `-m specmemo.actors.run`; a fork keeps the zygote's command line.
    assert "specmemo.actors.zygote" in cmdline(pid), cmdline(pid)
    assert stat(pid)[1] == d.proc.pid, "a forked actor is adopted by the kernel"


@pytest.fixture(scope="module")
def pair():
    d = Deployment(soak_config("zyg", PAIR), "zyg")
    try:
        yield d.wait_ready(["memory", *TORCH_ACTORS], timeout=240)
    finally:
        d.cleanup()


def test_the_torch_actors_are_forked_by_the_zygote_and_adopted_by_the_kernel(pair):
    with pair.client(timeout=10) as c:
        rows = actor_rows(c)
    for name in TORCH_ACTORS:
        assert_forked(pair, rows[name].pid)
        assert Path(f"/proc/{rows[name].pid}/comm").read_text().strip() == name
    assert "specmemo.actors.run" in cmdline(rows["memory"].pid)  # the others exec
    assert len(zygotes(pair.proc.pid, {r.pid for r in rows.values()})) == 1


def test_forked_model_actors_run_on_the_weights_the_zygote_loaded_once(pair):
    with pair.client(timeout=10) as c:
        for name in TORCH_ACTORS:
            info = c.call(name, "info")
            assert info.shared_weights is True and info.weight_bytes > 0, (name, info)


def test_a_forked_pair_chats_exactly_like_the_engine(pair):
    expected = chat_reference(CHAT_MESSAGES[:2])
    with pair.client(timeout=60) as c:
        for message, tokens in expected.items():
            session = c.open_session()
            assert c.ask(session, message, max_new_tokens=CHAT_TOKENS).token_ids == tokens
            c.close_session(session)


def test_a_killed_forked_actor_is_reaped_and_forked_again(pair):
    back: dict[str, list[float]] = {n: [] for n in TORCH_ACTORS}
    with pair.client(timeout=10) as c:
        for _ in range(2):
            for name in TORCH_ACTORS:
                old = actor_rows(c)[name].pid
                back[name].append(round(kill_and_wait(c, name, 120), 2))
                assert gone(old), f"{name} pid {old} was not reaped: state {stat(old)[0]}"
                assert_forked(pair, actor_rows(c)[name].pid)
                assert c.call(name, "info").shared_weights is True  # no reload after a restart
        session = c.open_session()
        assert len(c.ask(session, "still there?", max_new_tokens=4).token_ids) >= 1
        c.close_session(session)
    print(f"forked actors back after SIGKILL (s): {back}")


def test_a_killed_zygote_is_replaced_and_the_actors_keep_serving(pair):
    with pair.client(timeout=30) as c:
        rows = actor_rows(c)
        pids = {r.pid for r in rows.values()}
        [zygote] = zygotes(pair.proc.pid, pids)
        os.kill(zygote, signal.SIGKILL)
        assert gone(zygote), "the killed zygote was not reaped"
        session = c.open_session()
        assert len(c.ask(session, "hello", max_new_tokens=4).token_ids) >= 1
        c.close_session(session)
        # A restart right away: it waits for the new zygote (or is an exec); either way back.
        seconds = kill_and_wait(c, "draft", 120)
        deadline = time.monotonic() + 120
        while pair.log.read_text().count("zygote ready in") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        later = kill_and_wait(c, "verifier", 120)
        assert_forked(pair, actor_rows(c)["verifier"].pid)
    print(
        f"after the zygote's death: draft back in {seconds:.2f} s; verifier forked by the new "
        f"zygote, back in {later:.2f} s"
    )
    assert "zygote died (signal SIGKILL)" in pair.log.read_text()


def test_a_killed_kernel_leaves_no_zygote_and_no_actor(start_deployment):
    d = start_deployment(soak_config("zk", PAIR), "zk", ["memory", *TORCH_ACTORS], timeout=240)
    with d.client(timeout=10) as c:
        actors = {r.pid for r in actor_rows(c).values()}
    processes = actors | set(zygotes(d.proc.pid, actors))
    assert len(processes) == len(actors) + 1
    d.proc.kill()
    d.proc.wait(10)
    # Each gets SIGTERM at once (PDEATHSIG) and stops within its ladder (2 s for calls, 5 s for
    # on_stop, 1 s for BYE); on a loaded 2-core CI machine, tearing down three torch processes at
    # once took longer than 15 s once, so the bound is 30 s: an orphan never exits at all.
    deadline = time.monotonic() + 30
    while any(pid_alive(p) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [p for p in processes if pid_alive(p)]
    assert not left, f"orphans after the kernel was killed: {[why_alive(p) for p in left]}"


def test_a_torch_actor_with_its_own_env_is_started_with_exec(start_deployment):
    d = start_deployment(
        soak_config("ze", PAIR, draft={"env": {"OMP_NUM_THREADS": "1"}}), "ze", ["memory", *TORCH_ACTORS], timeout=240
    )
    with d.client(timeout=10) as c:
        rows = actor_rows(c)
    assert "specmemo.actors.run" in cmdline(rows["draft"].pid)
    assert_forked(d, rows["verifier"].pid)
    processes = {r.pid for r in rows.values()} | set(zygotes(d.proc.pid, set()))
    assert d.stop() == 0  # Ctrl-C: actors first, the zygote last, every one reaped
    assert not [p for p in processes if pid_alive(p)]


def test_a_zygote_with_a_second_thread_forks_nothing_and_the_actors_exec(start_deployment, monkeypatch):
    # fork() copies only the calling thread: a lock another thread holds would never be released.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    draft = {"config": {"class": "threaded_actor:ThreadedDraft"}}
    d = start_deployment(soak_config("zt", PAIR, draft=draft), "zt", ["memory", *TORCH_ACTORS], timeout=240)
    with d.client(timeout=30) as c:
        rows = actor_rows(c)
        session = c.open_session()
        assert len(c.ask(session, "hello", max_new_tokens=4).token_ids) >= 1
    for name in TORCH_ACTORS:
        assert "specmemo.actors.run" in cmdline(rows[name].pid)
    assert "zygote runs 2 threads after preloading" in d.log.read_text()
