"""Load against a deployment, every result checked: the client streams of the soak command and
the load tests.

- :func:`mixed_calls`: one client thread's stream of echo, matvec, solve and short chats, each
  result checked against numpy, scipy or the in-process engine's tokens (:func:`chat_reference`);
- :func:`pipelined_echo`: a raw DEALER with a window of calls in flight, checking that every
  correlation id is answered exactly once, with its own data;
- :class:`Tally`: thread-safe counts of calls, errors by name, wrong results and latencies;
- :func:`leaked_bytes`: the memory actor's usage once the load has stopped.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import zmq

from specmemo.protocol import Client, errors
from specmemo.protocol.methods import Usage
from specmemo.protocol.wire import Command, Header, decode, encode

#: Chat messages of the mixed load; their greedy replies are checked against the engine.
CHAT_MESSAGES = ("hello there", "how are you", "tell me a story", "what is a matrix")
CHAT_TOKENS = 8


@dataclass
class Tally:
    """Outcomes of calls made by many threads (every method takes the lock)."""

    calls: int = 0
    ok: int = 0
    errors: Counter = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)  # results that differ from the reference
    hung: int = 0  # calls that outlived deadline + grace
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(
        self, op: str, seconds: float, error: str | None = None, wrong: str = "", limit: float = float("inf")
    ) -> None:
        with self.lock:
            self.calls += 1
            if error:
                self.errors[error] += 1
            elif wrong:
                self.wrong.append(f"{op}: {wrong}")
            else:
                self.ok += 1
                self.latencies[op].append(seconds)
            if seconds > limit:
                self.hung += 1

    def percentiles(self, op: str | None = None) -> dict[str, float]:
        with self.lock:
            lat = [x for k, v in self.latencies.items() if op in (None, k) for x in v]
        if not lat:
            return {"p50_ms": 0.0, "p99_ms": 0.0, "n": 0}
        p50, p99 = np.percentile(lat, [50, 99])
        return {"p50_ms": round(float(p50) * 1e3, 2), "p99_ms": round(float(p99) * 1e3, 2), "n": len(lat)}


def small_skew(n: int, seed: int) -> sp.csr_array:
    """A random banded skew-symmetric matrix, S = A - Aᵀ with A strictly upper triangular."""
    rng = np.random.default_rng(seed)
    a = sp.random_array((n, n), density=0.2, rng=rng, format="csr")
    upper = sp.triu(a, k=1)
    return sp.csr_array(upper - upper.T)


def chat_reference(
    messages: tuple[str, ...] = CHAT_MESSAGES, max_new_tokens: int = CHAT_TOKENS
) -> dict[str, list[int]]:
    """Greedy replies of the in-process engine on the tiny pair (the actors must match them)."""
    import torch

    from specmemo.actors.engine import Engine
    from specmemo.actors.engine.tiny import tiny_pair, tiny_tokenizer

    torch.set_num_threads(1)
    draft, target = tiny_pair(seed=0)
    engine = Engine(draft, target, tiny_tokenizer(), budget_bytes=16 << 20, gamma=3)
    out = {}
    for i, message in enumerate(messages):
        _, ids, _ = engine.chat(f"ref{i}", message, max_new_tokens=max_new_tokens)
        out[message] = [int(t) for t in ids]
        engine.close(f"ref{i}")
    return out


def close_quietly(client: Client, session: str, attempts: int = 20) -> None:
    """Close a chat session, waiting out a turn that is still stopping or an actor that restarts."""
    for _ in range(attempts):
        try:
            client.call("verifier", "close", session=session, timeout=5)
            return
        except errors.NotFound:
            return
        except (errors.Conflict, errors.ActorDied, errors.DeadlineExceeded, errors.UnknownActor):
            time.sleep(0.1)


def mixed_calls(
    endpoint: str,
    seed: int,
    n_calls: int,
    tally: Tally,
    *,
    stop: threading.Event | None = None,
    timeout: float = 20.0,
    ops: dict[str, float] | None = None,
    chat_expected: dict[str, list[int]] | None = None,
) -> None:
    """One client's calls, drawn by weight from ``ops`` (echo, matvec, solve, chat), all checked.

    A matrix lost with a restarted solver (``NotFound``) is registered again; a chat session is
    opened, asked one short greedy turn and closed. Errors are counted by name, never raised.
    """
    ops = ops or {"echo": 0.4, "matvec": 0.25, "solve": 0.15, "chat": 0.2}
    names, weights = list(ops), np.array(list(ops.values())) / sum(ops.values())
    rng = np.random.default_rng(seed)
    matrix = small_skew(48, seed)
    mid = f"load-{os.getpid()}-{seed}"
    registered = False
    limit = timeout + 2.0
    with Client(endpoint, timeout=timeout) as c:
        try:
            for _ in range(n_calls):
                if stop is not None and stop.is_set():
                    return
                op = names[rng.choice(len(names), p=weights)]
                t0 = time.monotonic()
                error, wrong = None, ""
                try:
                    if op in ("matvec", "solve") and not registered:
                        try:
                            c.register_matrix(matrix, id=mid)
                        except errors.InvalidInput:
                            pass  # registered by a call whose reply was lost
                        registered = True
                    if op == "echo":
                        data = rng.integers(0, 1 << 30, size=int(rng.integers(1, 600)))
                        got = c.call("echo", "echo", data={"a": data, "n": int(data[0])}).data
                        if not (np.array_equal(got["a"], data) and got["n"] == int(data[0])):
                            wrong = "echo returned other data"
                    elif op == "matvec":
                        x = rng.standard_normal(matrix.shape[0])
                        if not np.allclose(c.matvec(mid, x), matrix @ x, rtol=1e-12, atol=1e-12):
                            wrong = "y != S x"
                    elif op == "solve":
                        b = rng.standard_normal(matrix.shape[0])
                        out = c.solve(mid, b, alpha=1.0, tol=1e-12)
                        ref = sp.linalg.spsolve(sp.csc_array(sp.eye_array(matrix.shape[0]) + matrix), b)
                        if not (out.converged and np.allclose(out.x, ref, rtol=1e-8, atol=1e-9)):
                            wrong = "x != scipy's solution"
                    else:
                        wrong, seconds = _chat(c, rng, timeout, chat_expected)
                except errors.SpecmemoError as exc:
                    if isinstance(exc, errors.NotFound) and op in ("matvec", "solve"):
                        registered = False
                    error = exc.name
                    seconds = exc.detail.get("turn_seconds", time.monotonic() - t0)
                else:
                    if op != "chat":
                        seconds = time.monotonic() - t0
                tally.record(op, seconds, error, wrong, limit)
                if error in ("ActorDied", "UnknownActor"):
                    time.sleep(0.05)  # the actor is restarting: back off as a real client would
        finally:
            try:
                c.call("solver", "drop", id=mid)  # a private matrix outlives its client: drop it
            except errors.SpecmemoError:
                pass


def _chat(
    c: Client, rng: np.random.Generator, timeout: float, expected: dict[str, list[int]] | None
) -> tuple[str, float]:
    """Open a session, one greedy turn, close it. Answers what is wrong ("" if nothing) and the
    turn's seconds: a chat's latency (and its deadline) is the turn's alone."""
    message = CHAT_MESSAGES[int(rng.integers(len(CHAT_MESSAGES)))]
    session = c.open_session()
    started = time.monotonic()
    try:
        reply = c.ask(session, message, max_new_tokens=CHAT_TOKENS, timeout=timeout)
    except errors.SpecmemoError as exc:
        exc.detail["turn_seconds"] = time.monotonic() - started
        raise
    finally:
        seconds = time.monotonic() - started
        close_quietly(c, session)
    if expected is not None and reply.token_ids != expected[message]:
        return f"chat tokens {reply.token_ids} != engine's {expected[message]}", seconds
    return "", seconds


@dataclass
class PipelineReport:
    sent: int = 0
    answered: int = 0
    lost: int = 0
    duplicated: int = 0
    wrong: int = 0
    errors: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # of replies
    error_latencies: list[float] = field(default_factory=list)  # of typed errors
    seconds: float = 0.0


def pipelined_echo(
    endpoint: str,
    n_calls: int,
    window: int = 32,
    *,
    timeout: float = 30.0,
    method: str = "echo",
    params: Callable[[int], dict] | None = None,
) -> PipelineReport:
    """Keep ``window`` echo calls in flight on one raw DEALER; every id must come back once,
    carrying its own data (a lost, duplicated or crossed reply is counted)."""
    params = params or (lambda i: {"data": i})
    report = PipelineReport()
    sock: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sent_at: dict[int, float] = {}
    done: set[int] = set()
    next_id = 1
    t0 = time.monotonic()
    try:
        while len(done) < n_calls and time.monotonic() - t0 < timeout:
            while next_id <= n_calls and len(sent_at) - len(done) < window:
                sock.send_multipart(
                    encode(
                        Command.REQUEST,
                        b"echo",
                        Header(id=next_id, method=method, deadline_ms=int(timeout * 1000)),
                        params(next_id),
                    ),
                    copy=False,
                )
                sent_at[next_id] = time.monotonic()
                next_id += 1
            if not sock.poll(100):
                continue
            msg = decode(sock.recv_multipart())
            cid = msg.header.id
            if cid in done or cid not in sent_at:
                report.duplicated += 1
                continue
            done.add(cid)
            seconds = time.monotonic() - sent_at[cid]
            if msg.command == Command.ERROR:
                report.errors[errors.error_from_wire(msg.body).name] += 1
                report.error_latencies.append(seconds)
                continue
            report.latencies.append(seconds)
            if method == "echo" and msg.body != {"data": cid}:
                report.wrong += 1
        while sock.poll(200):  # anything after the last reply is a duplicate
            sock.recv_multipart()
            report.duplicated += 1
    finally:
        sock.close()
    report.seconds = time.monotonic() - t0
    report.sent, report.answered = len(sent_at), len(done)
    report.lost = report.sent - report.answered
    return report


def beyond_prefix_stores(usage: Usage) -> int:
    """Live bytes but the model actors' prefix stores (reserved for as long as they live): the
    sessions' KV and any other reservation, 0 once a deployment holds nothing for anyone."""
    return usage.live - sum(usage.reserved.get(actor, 0) for actor in set(usage.leases.values()))


def leaked_bytes(client: Client, wait_s: float = 10.0) -> Usage:
    """The memory actor's usage once its sessions are gone (waits for late closes)."""
    deadline = time.monotonic() + wait_s
    while True:
        usage = client.usage()
        if (beyond_prefix_stores(usage) == 0 and not usage.sessions) or time.monotonic() > deadline:
            return usage
        time.sleep(0.1)
