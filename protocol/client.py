"""The client SDK: blocking :class:`Client` and its trio twin :class:`AsyncClient` (in
:mod:`.async_client`, re-exported here).

    from specmemo.protocol import Client
    with Client() as c:                      # finds the local deployment
        c.call("kernel", "ping").pid
        out = c.call("solver", "solve", id="m1", b=b, alpha=0.5)   # a SolveReply: out.x, out.iterations
        for chunk in c.stream("echo", "count", n=3):                # CountChunk(i=0), ...
            ...

Replies and chunks are the classes protocol/methods.py declares, decoded here at the boundary.
Errors raise the typed exceptions of :mod:`specmemo.protocol.errors`. A call that times out
sends a cancel to the callee and raises :class:`DeadlineExceeded`; replies that arrive after
that are dropped by correlation id. A client is not thread-safe: use one per thread.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from .async_client import HOLD_FROM, AsyncCaller, AsyncClient
from .calls import DEFAULT_TIMEOUT, dealer, request_frames, result_of, spec_for, stream_chunk
from .endpoint import find_endpoint
from .errors import DeadlineExceeded, SpecmemoError
from .methods import ActorInfo, ChatChunk, MatrixReport, MethodSpec, PingReply, SolveReply, Usage
from .wire import DEFAULT_MAX_MESSAGE_BYTES, Command, Header, Message, decode, encode, recv_frames, send_frames

__all__ = ["AsyncCaller", "AsyncClient", "ChatResult", "Client", "DEFAULT_TIMEOUT", "HOLD_FROM"]


@dataclass
class ChatResult:
    """What :meth:`Client.ask` returns."""

    text: str
    token_ids: list[int]
    tokens_per_s: float
    accepted_per_step: float  # mean accepted draft tokens per speculative step
    gamma_mean: float  # mean γ the memory actor granted
    stats: dict[str, Any] = field(default_factory=dict)


class Client:
    """Blocking client of a specmemo deployment (scripts, notebooks, the CLI)."""

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        curve: dict[str, bytes] | None = None,
        kinds: dict[str, str] | None = None,
    ) -> None:
        self.endpoint = find_endpoint(endpoint)
        self.kinds = dict(kinds or {})  # actor name -> kind, where they differ
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        self._ctx: zmq.Context = zmq.Context.instance()
        self._sock = dealer(self._ctx, self.endpoint, curve)
        self._ids = itertools.count(1)
        self._poll_items = [(self._sock, zmq.POLLIN)]  # zmq_poll itself: Poller adds a layer

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if not self._sock.closed:
            self._sock.close(linger=0)

    # ---------------------------------------------------------------- calls

    def call(self, actor: str, method: str, /, *, timeout: float | None = None, **params: Any) -> Any:
        """Call ``actor.method(**params)`` and return its reply, an instance of the method's declared
        class (the map as it came for an actor whose kind this client does not know: ``kinds``)."""
        spec = spec_for(actor, method, self.kinds)
        call_id = self._send(actor, method, params, timeout, spec)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        msg = self._recv_for(call_id, deadline, actor, method)
        if msg.command == Command.STREAM:
            self._cancel(actor, call_id)
        return result_of(msg, spec)

    def stream(self, actor: str, method: str, /, *, timeout: float | None = None, **params: Any) -> Iterator[Any]:
        """Call a streaming method; yield each chunk until the stream ends.

        ``timeout`` bounds the whole stream. Closing the iterator early cancels the call.
        """
        spec = spec_for(actor, method, self.kinds)
        call_id = self._send(actor, method, params, timeout, spec)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        finished = False
        try:
            while not finished:
                msg = self._recv_for(call_id, deadline, actor, method)
                finished = msg.command != Command.STREAM
                chunk = stream_chunk(msg, spec)
                if chunk is not None:
                    yield chunk
        finally:
            if not finished:
                self._cancel(actor, call_id)

    def ping(self) -> PingReply:
        return self.call("kernel", "ping")

    def actors(self) -> list[ActorInfo]:
        return self.call("kernel", "actors").actors

    # ---------------------------------------------------------------- chat helpers

    def open_session(self, session: str = "", *, actor: str = "verifier") -> str:
        """Open a chat session on the verifier; returns its id."""
        return self.call(actor, "open", session=session).session

    def close_session(self, session: str, *, actor: str = "verifier") -> int:
        """Close a chat session; its KV blocks are freed everywhere. Returns the target bytes freed."""
        return self.call(actor, "close", session=session).freed

    def chat(
        self,
        session: str,
        message: str,
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        seed: int = 0,
        gamma: int | None = None,
        tree: int | None = None,
        actor: str = "verifier",
        timeout: float | None = None,
    ) -> Iterator[ChatChunk]:
        """One chat turn, streamed: yields a chunk per speculative step as its tokens are accepted.
        ``gamma`` fixes the draft nodes per step and ``tree`` caps the token tree's width (1: a
        chain); by default the memory actor picks both within the deployment's ``tree_width``.

        Each chunk has ``tokens`` (ids), ``text`` (their text), ``step`` (γ, accepted, times)
        and ``stats`` (the turn so far: tokens_per_s, mean_accepted, alpha, ...); the last has
        ``done=True`` and the whole ``reply``. Closing the iterator early cancels the turn.
        """
        return self.stream(
            actor,
            "chat",
            session=session,
            message=message,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
            gamma=gamma,
            tree=tree,
            timeout=timeout,
        )

    def ask(self, session: str, message: str, **kw: Any) -> ChatResult:
        """The blocking form of :meth:`chat`: the reply text, its token ids and statistics."""
        tokens: list[int] = []
        last = ChatChunk(tokens=np.zeros(0, dtype=np.int64))
        gammas: list[int] = []
        for chunk in self.chat(session, message, **kw):
            tokens.extend(int(t) for t in chunk.tokens)
            if chunk.step:
                gammas.append(int(chunk.step.gamma))
            last = chunk
        stats = last.stats
        return ChatResult(
            text=last.reply,
            token_ids=tokens,
            stats=stats,
            tokens_per_s=float(stats.get("tokens_per_s", 0.0)),
            accepted_per_step=float(stats.get("mean_accepted", 0.0)),
            gamma_mean=sum(gammas) / len(gammas) if gammas else 0.0,
        )

    def usage(self, *, actor: str = "memory") -> Usage:
        """The memory actor's accounting: budget, live, peak, per session, per holder, leases."""
        return self.call(actor, "usage")

    # ---------------------------------------------------------------- solver helpers

    def register_matrix(
        self,
        matrix: Any = None,
        *,
        mtx: bytes | None = None,
        kind: str = "skew",
        id: str = "",
        actor: str = "solver",
        **kw: Any,
    ) -> MatrixReport:
        """Register a scipy sparse matrix (sent as zero-copy CSR arrays) or Matrix Market bytes.

        Returns the plan's report (``id``, ``n``, ``nnz``, bandwidth before/after RCM, parts).
        """
        if matrix is not None:
            csr = matrix.tocsr()
            kw.update(n=csr.shape[0], indptr=csr.indptr, indices=csr.indices, data=csr.data)
        return self.call(actor, "register", id=id, kind=kind, mtx=mtx, **kw)

    def matvec(self, matrix_id: str, x: Any, *, actor: str = "solver") -> Any:
        """y = S x on the solver actor."""
        return self.call(actor, "matvec", id=matrix_id, x=x).y

    def solve(
        self,
        matrix_id: str,
        b: Any,
        *,
        alpha: float = 1.0,
        tol: float = 1e-10,
        maxiter: int = 0,
        history: bool = False,
        actor: str = "solver",
        timeout: float | None = None,
    ) -> SolveReply:
        """Solve (alpha I + S) x = b by MRS; returns x, converged, iterations, residual, seconds."""
        return self.call(
            actor, "solve", id=matrix_id, b=b, alpha=alpha, tol=tol, maxiter=maxiter, history=history, timeout=timeout
        )

    def drop_matrix(self, matrix_id: str, *, actor: str = "solver") -> bool:
        return self.call(actor, "drop", id=matrix_id).dropped

    # ---------------------------------------------------------------- plumbing

    def _send(
        self, actor: str, method: str, params: dict[str, Any], timeout: float | None, spec: MethodSpec | None
    ) -> int:
        call_id = next(self._ids)
        limit = self.timeout if timeout is None else timeout
        frames = request_frames(call_id, actor, method, params, limit, self.max_message_bytes, spec)
        send_frames(self._sock, frames)
        return call_id

    def _cancel(self, actor: str, call_id: int) -> None:
        try:
            send_frames(self._sock, encode(Command.CANCEL, actor.encode(), Header(id=call_id)), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def _recv_for(self, call_id: int, deadline: float, actor: str, method: str) -> Message:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not zmq.zmq_poll(self._poll_items, max(1, int(left * 1000))):
                if time.monotonic() >= deadline:
                    self._cancel(actor, call_id)
                    raise DeadlineExceeded(
                        f"{actor}.{method} got no reply in time", detail={"actor": actor, "method": method}
                    )
                continue
            frames = recv_frames(self._sock)
            try:
                msg = decode(frames)
            except SpecmemoError:
                continue  # not ours to answer: a peer sent garbage back
            if msg.header.id == call_id:
                return msg
            # A late reply to an earlier call that timed out: dropped by correlation id.
