"""Load, faults and hostile frames against a deployment, alone or all at once (``specmemo soak``).

The pieces are plain functions so that the CI tests (``tests/test_faults_*``, ``test_fuzz_*``,
``test_load_*``) drive at small sizes the same code that the soak command runs for minutes:

- :func:`mixed_calls`: one client thread's stream of echo, matvec, solve and short chats, each
  result checked against numpy, scipy or the in-process engine's tokens;
- :func:`kill_and_wait`: SIGKILL an actor and time until its restarted process serves a call;
- :func:`hostile_frames`: a seeded generator of malformed messages, each marked answered or not;
- :func:`fuzz`: send them from a raw DEALER and count the typed errors that come back;
- :func:`pipelined_echo`: a raw DEALER with a window of calls in flight, checking that every
  correlation id is answered exactly once, with its own data;
- :class:`Tally`: thread-safe counts of calls, errors by name, wrong results and latencies.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
import typing
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import msgpack
import numpy as np
import scipy.sparse as sp
import zmq

from specmemo.protocol import Client
from specmemo.protocol import errors
from specmemo.protocol.methods import METHODS
from specmemo.protocol.schema import from_wire
from specmemo.protocol.wire import Command, Header, decode, encode

from .local import LocalDeployment

#: Calls that show an actor serves again after a restart, by actor kind.
PROBES: dict[str, tuple[str, dict[str, Any]]] = {
    "echo": ("echo", {"data": 1}), "solver": ("list", {}), "memory": ("usage", {}),
    "draft": ("info", {}), "verifier": ("sessions", {}),
}

#: The [deployment] table of the soak (``{name}`` to fill): fast heartbeats, quick restarts.
SOAK_HEADER = """
[deployment]
name = "{name}"
heartbeat_s = 0.3
heartbeat_misses = 10
restart_intensity = 100
restart_period_s = 30
backoff_s = 0.05
backoff_max_s = 0.2
stop_timeout_s = 3
max_message_bytes = 4194304
"""

#: Memory, verifier and draft on the tiny random-weight pair. The draft's config table comes
#: last, so that a test may append keys to it (``class = ...``).
TINY_PAIR = """
[actors.memory]
kind = "memory"
[actors.memory.config]
budget_mb = 64
block_tokens = 16

[actors.verifier]
kind = "verifier"
after = ["memory"]
[actors.verifier.config]
model = "tiny"
seed = 0
threads = 1

[actors.draft]
kind = "draft"
after = ["memory"]
[actors.draft.config]
model = "tiny"
seed = 0
threads = 1
"""

#: The soak deployment: echo and solver beside the tiny pair.
SOAK_CONFIG = SOAK_HEADER + """
[actors.echo]
kind = "echo"

[actors.solver]
kind = "solver"
[actors.solver.config]
threads = 1
""" + TINY_PAIR

#: Chat messages of the mixed load; their greedy replies are checked against the engine.
CHAT_MESSAGES = ("hello there", "how are you", "tell me a story", "what is a matrix")
CHAT_TOKENS = 8


# ---------------------------------------------------------------- counting


@dataclass
class Tally:
    """Outcomes of calls made by many threads (every method takes the lock)."""

    calls: int = 0
    ok: int = 0
    errors: Counter = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)      # results that differ from the reference
    hung: int = 0                                       # calls that outlived deadline + grace
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, op: str, seconds: float, error: str | None = None, wrong: str = "",
               limit: float = float("inf")) -> None:
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


# ---------------------------------------------------------------- a deployment of its own


def actor_rows(client: Client) -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in client.actors()}


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ---------------------------------------------------------------- mixed calls


def small_skew(n: int, seed: int) -> sp.csr_array:
    """A random banded skew-symmetric matrix, S = A - Aᵀ with A strictly upper triangular."""
    rng = np.random.default_rng(seed)
    a = sp.random_array((n, n), density=0.2, rng=rng, format="csr")
    upper = sp.triu(a, k=1)
    return sp.csr_array(upper - upper.T)


def chat_reference(messages: tuple[str, ...] = CHAT_MESSAGES, max_new_tokens: int = CHAT_TOKENS
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


def mixed_calls(endpoint: str, seed: int, n_calls: int, tally: Tally, *,
                stop: threading.Event | None = None, timeout: float = 20.0,
                ops: dict[str, float] | None = None,
                chat_expected: dict[str, list[int]] | None = None) -> None:
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
                        got = c.call("echo", "echo", data={"a": data, "n": int(data[0])})["data"]
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
                        if not (out["converged"] and np.allclose(out["x"], ref, rtol=1e-8, atol=1e-9)):
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
                    time.sleep(0.05)   # the actor is restarting: back off as a real client would
        finally:
            try:
                c.call("solver", "drop", id=mid)   # a private matrix outlives its client: drop it
            except errors.SpecmemoError:
                pass


def _chat(c: Client, rng: np.random.Generator, timeout: float,
          expected: dict[str, list[int]] | None) -> tuple[str, float]:
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


# ---------------------------------------------------------------- faults


def kill_and_wait(client: Client, name: str, timeout: float = 30.0) -> float:
    """SIGKILL actor ``name``; seconds until a new process is ready and answers a probe call."""
    row = actor_rows(client)[name]
    if row["state"] != "ready":
        raise RuntimeError(f"{name} is not ready (state {row['state']}); cannot kill it")
    old = row["pid"]
    method, params = PROBES[row["kind"]]
    os.kill(old, signal.SIGKILL)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            row = actor_rows(client)[name]
            if row["state"] == "ready" and row["pid"] != old:
                client.call(name, method, timeout=5, **params)
                return time.monotonic() - t0
        except (errors.ActorDied, errors.UnknownActor, errors.DeadlineExceeded):
            pass
        time.sleep(0.01)
    raise TimeoutError(f"{name} was not back {timeout:.0f} s after SIGKILL")


def killer(endpoint: str, names: list[str], rounds: int, pause: float, out: list[tuple[str, float]],
           stop: threading.Event | None = None, back_timeout: float = 120.0) -> None:
    """Kill each actor of ``names`` in turn, ``rounds`` times; appends (name, seconds back)."""
    with Client(endpoint, timeout=10) as c:
        for _ in range(rounds):
            for name in names:
                if stop is not None and stop.is_set():
                    return
                out.append((name, kill_and_wait(c, name, back_timeout)))
                time.sleep(pause)


# ---------------------------------------------------------------- hostile frames


def _request(route: bytes, call_id: int, method: str, body: Any = None) -> list[bytes]:
    return [bytes(f) for f in encode(Command.REQUEST, route, Header(id=call_id, method=method), body)]


def _wrong_bodies() -> list[tuple[str, str, dict[str, Any]]]:
    """(kind, method, body) where a required field has a value of the wrong type."""
    wrong_values = [12345, "x", [1, "a"], {"k": None}, 2.5, True, b"\x00"]
    out = []
    for name, spec in sorted(METHODS.items()):
        kind, _, method = name.partition(".")
        if kind == "kernel":
            continue
        hints = typing.get_type_hints(spec.request)
        for f in dataclasses.fields(spec.request):
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING \
                    or hints[f.name] is Any:
                continue
            for value in wrong_values:
                body = {f.name: value}
                try:
                    from_wire(spec.request, body)
                except errors.BadRequest:
                    out.append((kind, method, body))
    return out


def hostile_frames(seed: int, count: int, actors: dict[str, str]) -> Iterator[tuple[list[bytes], bool, str]]:
    """``count`` malformed messages: (frames, answered, label). ``answered``: the kernel or the
    actor must send back exactly one typed error; otherwise the message is dropped silently.

    ``actors`` maps each actor name of the deployment to its kind. Nothing generated here is a
    valid call that could change an actor's state.
    """
    rng = np.random.default_rng(seed)
    routes = sorted(actors)
    wrong = [(n, m, b) for n in routes for k, m, b in _wrong_bodies() if k == actors[n]]
    ids = iter(range(1, 1 << 62))

    def rand(lo: int, hi: int) -> bytes:
        return rng.bytes(int(rng.integers(lo, hi)))

    def pick(seq: Any) -> Any:
        return seq[int(rng.integers(len(seq)))]

    def array_spec() -> tuple[list[Any], list[bytes]]:
        case = int(rng.integers(7))
        if case == 0:   # a huge declared size, no buffer
            return ["<f8", [int(rng.integers(1 << 30, 1 << 47))], 0], []
        if case == 1:   # a buffer that does not match its shape
            n = int(rng.integers(1, 200))
            return ["<f4", [n + int(rng.integers(1, 9))], 0], [rng.bytes(4 * n)]
        if case == 2:   # a shape whose int64 product wraps around to the buffer's size
            return ["<f8", [1 << 32, 1 << 32], b""], []
        if case == 3:
            return [pick(["|O", ">f8", "<c16", "V8", "x"]), [2], b"\x00" * 16], []
        if case == 4:
            return ["<i8", [2], int(rng.integers(1, 9))], [b"\x00" * 16][:int(rng.integers(2))]
        if case == 5:
            return ["<i8", [-1, 2], b""], []
        return ["<i8", [1] * 9, b"\x00" * 8], []

    for _ in range(count):
        route = pick(routes).encode()
        cid = next(ids)
        case = int(rng.integers(17))
        if case == 0:
            yield [rand(0, 40) for _ in range(int(rng.integers(1, 4)))], True, "random frames"
        elif case == 1:
            yield _request(route, cid, "echo", {"data": 1})[:int(rng.integers(1, 5))], True, "truncated"
        elif case == 2:
            magic = rand(0, 6)
            if magic[:2] == b"SM":
                magic = b"XX" + magic[2:]
            yield [magic, *_request(route, cid, "echo")[1:]], True, "bad magic"
        elif case == 3:
            version = pick([0, 2, 7, 255])
            yield [b"SM" + bytes([version]), *_request(route, cid, "echo")[1:]], True, "bad version"
        elif case == 4:
            cmd = pick([b"", b"\x00", b"\x0b", b"\xff", b"\x01\x01"])
            frames = _request(route, cid, "echo")
            yield [frames[0], cmd, *frames[2:]], True, "bad command"
        elif case == 5:
            frames = _request(route, cid, "echo")
            yield [*frames[:3], b"\xc1" + rand(0, 20), *frames[4:]], True, "bad header msgpack"
        elif case == 6:
            header = pick([{"id": "x"}, {"id": -1}, {"id": 1.5}, {"m": 5}, {"dl": -3}, {"s": "a"},
                           [1, 2], "text", {"id": True}])
            frames = _request(route, cid, "echo")
            yield [*frames[:3], msgpack.packb(header), *frames[4:]], True, "header of wrong types"
        elif case == 7:
            yield _request(b"nobody-" + rand(1, 6).hex().encode(), cid, "echo"), True, "unknown actor"
        elif case == 8:
            yield _request(b"\xff\xfe" + rand(0, 4), cid, "echo"), True, "route not utf-8"
        elif case == 9:
            yield _request(route, cid, "no_such_" + rand(1, 4).hex()), True, "unknown method"
        elif case == 10:
            name, method, body = pick(wrong)
            yield _request(name.encode(), cid, method, body), True, "body of wrong types"
        elif case == 11:
            name = pick(routes)
            method = pick([n.partition(".")[2] for n in METHODS if n.startswith(actors[name] + ".")])
            frames = _request(name.encode(), cid, method)
            body = pick([b"\xc1" + rand(0, 30), msgpack.packb([1, 2]), msgpack.packb("s"),
                         msgpack.packb(7), b"\x91" * 2000 + b"\xc0", msgpack.packb({}) + b"\x00"])
            yield [*frames[:4], body], True, "bad body msgpack"
        elif case == 12:
            spec, buffers = array_spec()
            frames = _request(b"echo" if "echo" in actors else route, cid, "echo")
            body = msgpack.packb({"data": {"$nd": spec}}, use_bin_type=True)
            yield [*frames[:4], body, *buffers], True, "bad array"
        elif case == 13:
            frames = [bytes(f) for f in encode(Command.CANCEL, route, Header(id=int(rng.integers(1 << 40))))]
            yield frames, False, "cancel of an unknown id"
        elif case == 14:
            # answers from a client are dropped; HEARTBEAT and BYE (actor commands) get BadRequest
            cmd = pick([Command.REPLY, Command.STREAM, Command.END, Command.HEARTBEAT, Command.BYE])
            frames = [bytes(f) for f in encode(cmd, b"c-" + rand(1, 6).hex().encode(), Header(id=cid))]
            yield frames, cmd in (Command.HEARTBEAT, Command.BYE), "actor command from a client"
        elif case == 15:
            body = pick([b"\xc1", msgpack.packb({"kind": "x"}), msgpack.packb({"kind": "echo", "pid": 1})])
            frames = [bytes(f) for f in encode(Command.READY, route, Header(id=cid))]
            yield [*frames[:4], body], True, "READY under a supervised name"
        else:
            frames = [bytes(f) for f in encode(Command.NOTICE, route, Header(id=cid), {"event": "x"})]
            yield frames, True, "NOTICE from a client"


@dataclass
class FuzzReport:
    sent: int = 0
    expected_replies: int = 0
    replies: int = 0
    not_errors: int = 0                                   # replies that were not ERROR
    errors: Counter = field(default_factory=Counter)      # typed errors received, by name
    labels: Counter = field(default_factory=Counter)


def fuzz(endpoint: str, seed: int, count: int, actors: dict[str, str], *, batch: int = 200,
         drain_s: float = 5.0) -> FuzzReport:
    """Send ``count`` hostile messages from one raw DEALER in batches; collect every answer."""
    report = FuzzReport()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(endpoint)
    try:
        frames_iter = hostile_frames(seed, count, actors)
        while True:
            chunk = [next(frames_iter, None) for _ in range(batch)]
            chunk = [c for c in chunk if c is not None]
            for frames, answered, label in chunk:
                sock.send_multipart(frames)
                report.sent += 1
                report.expected_replies += answered
                report.labels[label] += 1
            _drain(sock, report, report.expected_replies, drain_s)
            if len(chunk) < batch:
                break
        _drain(sock, report, report.expected_replies + 1, 0.3)   # nothing more may come
    finally:
        sock.close()
    return report


def _drain(sock: zmq.Socket, report: FuzzReport, until: int, quiet_s: float) -> None:
    while report.replies < until and sock.poll(int(quiet_s * 1000)):
        try:
            msg = decode(sock.recv_multipart())
        except errors.SpecmemoError:
            report.not_errors += 1
            report.replies += 1
            continue
        report.replies += 1
        if msg.command != Command.ERROR:
            report.not_errors += 1
            continue
        report.errors[errors.error_from_wire(msg.body).name] += 1


# ---------------------------------------------------------------- exactly-once replies


@dataclass
class PipelineReport:
    sent: int = 0
    answered: int = 0
    lost: int = 0
    duplicated: int = 0
    wrong: int = 0
    errors: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)          # of replies
    error_latencies: list[float] = field(default_factory=list)    # of typed errors
    seconds: float = 0.0


def pipelined_echo(endpoint: str, n_calls: int, window: int = 32, *, timeout: float = 30.0,
                   method: str = "echo", params: Callable[[int], dict] | None = None) -> PipelineReport:
    """Keep ``window`` echo calls in flight on one raw DEALER; every id must come back once,
    carrying its own data (a lost, duplicated or crossed reply is counted)."""
    params = params or (lambda i: {"data": i})
    report = PipelineReport()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sent_at: dict[int, float] = {}
    done: set[int] = set()
    next_id = 1
    t0 = time.monotonic()
    try:
        while len(done) < n_calls and time.monotonic() - t0 < timeout:
            while next_id <= n_calls and len(sent_at) - len(done) < window:
                sock.send_multipart(encode(Command.REQUEST, b"echo",
                                           Header(id=next_id, method=method, deadline_ms=int(timeout * 1000)),
                                           params(next_id)), copy=False)
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
        while sock.poll(200):   # anything after the last reply is a duplicate
            sock.recv_multipart()
            report.duplicated += 1
    finally:
        sock.close()
    report.seconds = time.monotonic() - t0
    report.sent, report.answered = len(sent_at), len(done)
    report.lost = report.sent - report.answered
    return report


# ---------------------------------------------------------------- the soak command


def leaked_bytes(client: Client, wait_s: float = 10.0) -> dict[str, Any]:
    """The memory actor's usage once its sessions are gone (waits for late closes)."""
    deadline = time.monotonic() + wait_s
    while True:
        usage = client.usage()
        if (usage["live"] == 0 and not usage["sessions"]) or time.monotonic() > deadline:
            return usage
        time.sleep(0.1)


def run_soak(minutes: float, clients: int = 4, kill_pause: float = 2.0, fuzz_batch: int = 500,
             seed: int = 0, out: Any = None) -> int:
    """Load + faults + fuzz together on a fresh tiny deployment; prints a summary; 0 when clean."""
    out = out or sys.stdout

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    say(f"soak: {minutes:g} min, {clients} clients, kills every {kill_pause:g} s, "
        f"fuzz bursts of {fuzz_batch}")
    expected = chat_reference()
    dep = LocalDeployment(SOAK_CONFIG.format(name=f"soak{os.getpid()}"), f"soak{os.getpid()}")
    pids: dict[str, int] = {}
    try:
        dep.wait_ready(["echo", "solver", "memory", "draft", "verifier"])
        with Client(dep.endpoint, timeout=10) as c:
            rows = actor_rows(c)
        actors = {n: r["kind"] for n, r in rows.items()}
        stop = threading.Event()
        tally, kills, fuzzed = Tally(), [], FuzzReport()
        end = time.monotonic() + minutes * 60

        def fuzz_loop() -> None:
            i = 0
            while not stop.is_set():
                r = fuzz(dep.endpoint, seed + 1000 + i, fuzz_batch, actors)
                fuzzed.sent += r.sent
                fuzzed.expected_replies += r.expected_replies
                fuzzed.replies += r.replies
                fuzzed.not_errors += r.not_errors
                fuzzed.errors.update(r.errors)
                i += 1

        threads = [threading.Thread(target=mixed_calls, args=(dep.endpoint, seed + i, 10**9, tally),
                                    kwargs={"stop": stop, "chat_expected": expected}, daemon=True)
                   for i in range(clients)]
        threads.append(threading.Thread(target=killer, daemon=True, args=(
            dep.endpoint, ["draft", "verifier", "memory", "solver"], 10**9, kill_pause, kills, stop)))
        threads.append(threading.Thread(target=fuzz_loop, daemon=True))
        for t in threads:
            t.start()
        while time.monotonic() < end and all(t.is_alive() for t in threads):
            time.sleep(1.0)
        crashed = [t.name for t in threads if not t.is_alive()]
        stop.set()
        for t in threads:
            t.join(60)
        pipe = pipelined_echo(dep.endpoint, 5000, 64)
        with Client(dep.endpoint, timeout=10) as c:
            usage = leaked_bytes(c)
            rows = actor_rows(c)
        echo_restarts = rows["echo"]["restarts"]
        kernel_alive = dep.proc.poll() is None
        pids = {n: r["pid"] for n, r in rows.items()}
    finally:
        code = dep.stop()
        dep.cleanup()
    orphans = [n for n, p in pids.items() if pid_alive(p)]
    back = defaultdict(list)
    for name, seconds in kills:
        back[name].append(seconds)
    say(f"calls        {tally.calls} ({tally.ok} ok), wrong results {len(tally.wrong)}, hung {tally.hung}")
    for op in ("echo", "matvec", "solve", "chat"):
        say(f"  {op:<8} {tally.percentiles(op)}")
    say(f"errors       {dict(tally.errors.most_common())}")
    for name, xs in sorted(back.items()):
        say(f"kills        {name:<9} {len(xs):3d} x, back in max {max(xs):.2f} s, "
            f"median {np.median(xs):.2f} s")
    say(f"restarts     {({n: r['restarts'] for n, r in rows.items()})}")
    say(f"fuzz         {fuzzed.sent} frames, {fuzzed.replies}/{fuzzed.expected_replies} typed errors "
        f"expected back, {fuzzed.not_errors} untyped; {dict(fuzzed.errors.most_common())}")
    say(f"exactly-once {pipe.answered}/{pipe.sent} answered, lost {pipe.lost}, duplicated {pipe.duplicated}, "
        f"wrong {pipe.wrong}, {pipe.sent / pipe.seconds:.0f} calls/s")
    say(f"memory       live {usage['live']} B, sessions {len(usage['sessions'])}, peak {usage['peak']} B "
        f"-> leaked blocks: {'none' if usage['live'] == 0 else 'YES'}")
    say(f"deployment   kernel alive to the end: {kernel_alive}, echo never restarted: {echo_restarts == 0}, "
        f"stopped with code {code}, orphans {orphans or 'none'}")
    clean = (not tally.wrong and tally.hung == 0 and usage["live"] == 0 and kernel_alive
             and fuzzed.replies == fuzzed.expected_replies and fuzzed.not_errors == 0
             and "Internal" not in tally.errors and "Internal" not in fuzzed.errors
             and pipe.lost == pipe.duplicated == pipe.wrong == 0 and echo_restarts == 0
             and not crashed and code == 0 and not orphans)
    if tally.wrong:
        say("wrong results: " + "; ".join(tally.wrong[:5]))
    say("soak: " + ("clean" if clean else "FAILED"))
    return 0 if clean else 1
