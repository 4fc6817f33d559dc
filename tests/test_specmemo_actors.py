"""SpecMemo through real actor processes (tiny models): same tokens as in-process, batching,
faults (draft and verifier killed mid-chat), and bad input."""

from __future__ import annotations

import os
import signal
import threading
import time
from fractions import Fraction

import numpy as np
import pytest
from engine_helpers import tiny_engine

from specmemo.actors.draft import _check_rows
from specmemo.actors.engine import Engine
from specmemo.actors.engine.tiny import tiny_pair, tiny_tokenizer
from specmemo.deploy.tiny import PAIR, tiny_config
from specmemo.protocol import ActorDied, BadRequest, Conflict, InvalidInput, NotFound, Unauthorized
from specmemo.protocol.model_messages import ProposeRequest

CONFIG = tiny_config(
    "spec",
    PAIR,
    {
        "heartbeat_s": 0.5,
        "heartbeat_misses": 20,
        "restart_intensity": 10,
        "restart_period_s": 60,
        "backoff_s": 0.05,
        "stop_timeout_s": 3,
    },
    memory={"config": {"budget_mb": 16, "tree_width": 3}},
    verifier={"config": {"max_sessions_per_client": 4}},
)

GAMMA = 3


@pytest.fixture(scope="module")
def spec():
    from conftest import Deployment

    d = Deployment(CONFIG, "spec")
    try:
        yield d.wait_ready(["memory", "draft", "verifier"], timeout=180)
    finally:
        d.cleanup()


@pytest.fixture(scope="module")
def engine():
    return tiny_engine(16 << 20, gamma=GAMMA)


def reference(engine: Engine, session: str, turns: list[tuple[str, int]]) -> list[list[int]]:
    out = []
    for message, n in turns:
        _, ids, _ = engine.chat(session, message, max_new_tokens=n)
        out.append([int(t) for t in ids])
    engine.close(session)
    return out


def test_a_multi_turn_chat_through_the_actors_gives_the_in_process_tokens(spec, engine):
    turns = [("hello there", 24), ("and once more", 16)]
    expected = reference(engine, "ref-a", turns)
    with spec.client(timeout=60) as c:
        session = c.open_session()
        got = [c.ask(session, m, max_new_tokens=n, gamma=GAMMA) for m, n in turns]
        assert [r.token_ids for r in got] == expected
        assert got[0].text and got[0].tokens_per_s > 0 and got[0].gamma_mean > 0
        usage = c.usage()
        assert usage.sessions[session] > 0 and usage.live <= usage.budget
        gauges = c.call("memory", "metrics").values
        assert gauges["kv_budget_bytes"] == 16 << 20 and gauges["kv_live_bytes"] == usage.live
        assert c.call("verifier", "metrics").values["tokens_per_s"] > 0
        c.close_session(session)
        assert session not in c.usage().sessions


def test_a_tree_chat_through_the_actors_gives_the_in_process_tokens(spec):
    import torch

    torch.set_num_threads(1)
    draft, target = tiny_pair(seed=0)
    engine = Engine(draft, target, tiny_tokenizer(), budget_bytes=16 << 20, gamma=5, tree=2)
    expected = reference(engine, "ref-tree", [("grow a tree", 30)])[0]
    with spec.client(timeout=60) as c:
        session = c.open_session()
        chunks = list(c.chat(session, "grow a tree", max_new_tokens=30, gamma=5, tree=2))
        assert [int(t) for ch in chunks for t in ch.tokens] == expected
        assert {ch.step.width for ch in chunks if ch.step.gamma >= 2} == {2}
        c.close_session(session)
        assert session not in c.usage().sessions


def test_chunks_stream_as_steps_are_accepted(spec):
    with spec.client(timeout=60) as c:
        session = c.open_session()
        chunks = list(c.chat(session, "stream me", max_new_tokens=12, gamma=GAMMA))
        assert len(chunks) >= 2 and chunks[-1].done and not any(ch.done for ch in chunks[:-1])
        assert sum(len(ch.tokens) for ch in chunks) == 12
        assert all(isinstance(ch.tokens, np.ndarray) for ch in chunks)
        assert chunks[-1].reply.startswith("".join(ch.text for ch in chunks[:-1]))
        c.close_session(session)


def accept_calls(spec) -> int:
    with spec.client(timeout=60) as c:
        return int(c.call("draft", "metrics").values.get("accept_calls", 0))


def test_two_concurrent_chats_are_batched_and_both_correct(spec, engine):
    messages = {"left": "first conversation", "right": "a second one"}
    expected = {k: reference(engine, f"ref-{k}", [(m, 40)])[0] for k, m in messages.items()}
    got, batches = {}, []
    calls_before = accept_calls(spec)

    def run(key: str) -> None:
        with spec.client(timeout=120) as c:
            session = c.open_session()
            ids = []
            for ch in c.chat(session, messages[key], max_new_tokens=40, gamma=GAMMA):
                ids.extend(int(t) for t in ch.tokens)
                batches.append(ch.step.batch)
            got[key] = ids
            c.close_session(session)

    threads = [threading.Thread(target=run, args=(k,)) for k in messages]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert got == expected
    assert max(batches) == 2, "the two sessions never shared a target forward"
    # a step of b sessions streams b chunks, each saying b, and settles the draft in one call
    steps = sum(Fraction(1, b) for b in batches)
    assert accept_calls(spec) - calls_before == steps < len(batches)


def test_bad_input_gets_typed_errors_and_leaks_nothing(spec):
    with spec.client(timeout=60) as c:
        with pytest.raises(NotFound):
            c.ask("no-such-session", "hi")
        session = c.open_session()
        with pytest.raises(InvalidInput, match="empty"):
            c.ask(session, "   ")
        with pytest.raises(InvalidInput, match="context"):
            c.ask(session, "x" * 600)  # the tiny models' context is 512 tokens
        with pytest.raises(InvalidInput):
            c.ask(session, "hi", max_new_tokens=0)
        c.close_session(session)
        with pytest.raises(NotFound):
            c.ask(session, "closed now")
        assert session not in c.usage().sessions
        # a client never reaches the draft's steps; only actors may call them
        with pytest.raises(Unauthorized):
            c.call("draft", "propose", sessions=["s"], gammas=[2], blocks=[1], forwards=[1, 2])


def test_a_draft_step_with_per_session_lists_that_disagree_is_refused_before_any_work():
    def request(**fields) -> ProposeRequest:
        return ProposeRequest(**{"sessions": ["a", "b"], "gammas": [2, 3], "blocks": [1, 1], **fields})

    _check_rows(request(widths=[1, 2], forwards=[2, 1], rates=[[0.7], []], temperature=[0.0, 1.0]))
    for bad, match in [
        (request(forwards=[1]), "forwards"),
        (request(gammas=[2]), "gammas"),
        (request(temperature=[0.5]), "temperature"),
        (request(forwards=[1, -1]), "counts"),
        (request(widths=[0, 1]), "widths"),
    ]:
        with pytest.raises(BadRequest, match=match):
            _check_rows(bad)


def test_a_session_belongs_to_the_client_that_opened_it(spec):
    with spec.client(timeout=60) as a, spec.client(timeout=60) as b:
        session = a.open_session()
        assert len(session) > 12  # not a counter another client could guess
        stream = a.chat(session, "long answer please", max_new_tokens=200, gamma=GAMMA)
        next(stream)
        for call in (lambda: b.ask(session, "me too"), lambda: b.close_session(session)):
            with pytest.raises(NotFound):  # as if it did not exist
                call()
        with pytest.raises(NotFound):
            b.ask("s-no-such-session", "hello")
        with pytest.raises(Conflict):  # its owner, while it generates
            a.ask(session, "me too")
        rest = list(stream)
        assert rest[-1].done
        a.close_session(session)


def test_one_client_cannot_hold_more_sessions_than_its_limit(spec):
    from specmemo.protocol import Overloaded

    with spec.client(timeout=60) as greedy, spec.client(timeout=60) as other:
        held = [greedy.open_session() for _ in range(4)]
        with pytest.raises(Overloaded, match="max_sessions_per_client = 4"):
            greedy.open_session()
        mine = other.open_session()  # the limit is per client: others still open
        assert other.ask(mine, "hello", max_new_tokens=4, gamma=GAMMA).token_ids
        greedy.close_session(held.pop())  # a closed session gives its slot back
        held.append(greedy.open_session())
        for session in held:
            greedy.close_session(session)
        other.close_session(mine)


def test_a_client_that_disconnects_mid_stream_frees_its_session(spec):
    with spec.client(timeout=60) as c:
        session = c.open_session()
        stream = c.chat(session, "talk for a while", max_new_tokens=300, gamma=GAMMA)
        next(stream)
        stream.close()  # cancels the call
        deadline = time.monotonic() + 10
        while session in c.usage().sessions and time.monotonic() < deadline:
            time.sleep(0.05)
        assert session not in c.usage().sessions
        other = c.open_session()  # everyone else is undisturbed
        assert len(c.ask(other, "still fine?", max_new_tokens=4).token_ids) == 4
        c.close_session(other)


def test_the_chat_command_streams_replies_and_prints_statistics_on_request(spec):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "specmemo.deploy.cli", "chat", "--max-new-tokens", "6"],
        input="hello\n/stats\nagain\n/usage\n/quit\n",
        env=spec.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("assistant> ") == 2
    assert "statistics on" in out.stdout and "6 tokens" in out.stdout and "tokens/s" in out.stdout
    assert "budget" in out.stdout


def test_the_draft_killed_mid_chat_is_restarted_and_the_chat_completes_unchanged(spec, engine):
    expected = reference(engine, "ref-kill-draft", [("survive a crash", 120)])[0]
    draft_pid = spec.actor_pid("draft")
    with spec.client(timeout=120) as c:
        session = c.open_session()
        ids = []
        for i, ch in enumerate(c.chat(session, "survive a crash", max_new_tokens=120, gamma=GAMMA)):
            ids.extend(int(t) for t in ch.tokens)
            if i == 2:
                os.kill(draft_pid, signal.SIGKILL)
        assert ids == expected
        assert spec.actor_pid("draft") != draft_pid
        c.close_session(session)


def test_the_verifier_killed_mid_chat_gives_actor_died_and_its_blocks_are_reclaimed(spec):
    pid = spec.actor_pid("verifier")
    with spec.client(timeout=60) as c:
        session = c.open_session()
        stream = c.chat(session, "this will not finish", max_new_tokens=400, gamma=GAMMA)
        next(stream)
        assert c.usage().sessions.get(session, 0) > 0
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ActorDied):
            list(stream)
        assert time.monotonic() - t0 < 2.0
        deadline = time.monotonic() + 5
        while session in c.usage().sessions and time.monotonic() < deadline:
            time.sleep(0.05)
        assert session not in c.usage().sessions
