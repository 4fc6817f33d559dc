"""The verifier actor: the target model, the chat sessions, and the loop that drives them.

Each step is grant (memory actor) -> propose (draft actor) -> verify (here, one target
forward for every active session) -> commit (memory actor), run by the engine's
:class:`Driver` in a worker thread. The Driver talks to the other two actors through
:class:`RemoteMemory` and :class:`RemoteDraft`: synchronous proxies with the cores' method
names that hop back into the trio loop for each call. One engine task owns the Driver:
sessions join and leave between steps, so concurrent chats share each target forward.

Recovery: when the draft actor dies mid-step, :class:`RemoteDraft` waits for its restart and
rebuilds the sessions' draft caches from their committed token ids; the step then goes on
(greedy output is unchanged). When this actor dies, the kernel fails its calls with
``ActorDied`` and the memory actor releases the sessions it owned. When the memory actor
dies, its accounting is gone: the turns in flight fail with ``ActorDied``, every target cache
is dropped (the conversations stay), the lease is registered with the restarted memory actor,
and each session's next turn rebuilds its caches from its committed token ids.
"""

from __future__ import annotations

import itertools
import logging
import math
import secrets
from typing import Any

import numpy as np
import trio

from specmemo.actors.engine import VerifierCore
from specmemo.actors.engine.driver import DRAFT, TARGET, Driver, TurnEvent
from specmemo.actors.engine.errors import EngineError
from specmemo.actors.engine.prefix import DEFAULT_TOKENS as DEFAULT_PREFIX_TOKENS
from specmemo.protocol import errors
from specmemo.protocol.methods import (
    ChatChunk,
    ChatRequest,
    CompleteRequest,
    Empty,
    Freed,
    GenerateRequest,
    ModelInfo,
    OpenChat,
    SessionList,
    SessionRef,
    StepInfo,
)

from .base import Actor, Call
from .lease import register_lease
from .memory import ENGINE_ERRORS
from .modelconfig import describe_precision, load_actor_model, model_info, preload_actor_model, set_model_gauges
from .proxies import RemoteDraft, RemoteMemory, cost_shape
from .turn_stream import TurnStream

__all__ = ["RemoteDraft", "RemoteMemory", "VerifierActor"]  # the proxies, re-exported

log = logging.getLogger("specmemo.verifier")


class VerifierActor(Actor):
    kind = "verifier"
    errors = ENGINE_ERRORS

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name, config)
        self.memory_name = config.get("memory", "memory")
        self.draft_name = config.get("draft", "draft")
        self.peers.kinds.update({self.memory_name: "memory", self.draft_name: "draft"})
        self.streams: dict[str, TurnStream] = {}
        self.owners: dict[str, bytes] = {}  # session -> routing id of the client that opened it
        self.joins: list[tuple[ChatRequest | GenerateRequest | CompleteRequest, TurnStream]] = []
        self.leaves: list[str] = []
        self.wake = trio.Event()
        self._ids = itertools.count(1)

    # ---------------------------------------------------------------- lifecycle

    #: Imports for the zygote, before it forks this actor (see :mod:`specmemo.actors.zygote`).
    preload = staticmethod(preload_actor_model)

    async def on_start(self) -> None:
        import torch

        torch.set_num_threads(int(self.config.get("threads", torch.get_num_threads())))
        model, tokenizer = await self.run_sync(load_actor_model, self.config, "target")
        block_tokens = int(self.config.get("block_tokens", 16))
        info = await self._wait_for_draft()
        context = model.config.get_text_config(decoder=True).max_position_embeddings
        self.core = VerifierCore(
            model,
            tokenizer,
            block_tokens,
            int(self.config.get("spare_blocks", 1)),
            min(info.max_context, context),
            int(self.config.get("prefix_tokens", DEFAULT_PREFIX_TOKENS)),
        )
        if info.vocab_size != self.core.vocab_size:
            raise SystemExit(
                f"draft vocabulary {info.vocab_size} != target vocabulary {self.core.vocab_size}: not a pair"
            )
        self.memory_ready = trio.Event()  # set by _add_holder, once registered (on_registered)
        self.trio_token = trio.lowlevel.current_trio_token()
        memory = RemoteMemory(self._peer_call, self.memory_name, self.name)
        self.draft = RemoteDraft(self._peer_call, self.draft_name, self.core.ids)
        eos = tokenizer.eos_token_id if tokenizer is not None else None
        if not self.config.get("stop_at_eos", True):
            eos = None  # benchmarks: always generate the requested count
        self.driver = Driver(
            self.core,
            self.draft,
            memory,
            (eos,) if eos is not None else (),
            measure_cost=self.config.get("cost_ratio") is None,
            gamma_max=int(self.config.get("gamma_max", 8)),
        )
        self.memory = memory
        self.gamma, self.tree = self.config.get("gamma"), self.config.get("tree")
        self.lookup = int(self.config.get("lookup", 0))  # the longest lookup tail a step may add
        set_model_gauges(self.metrics, self.core)
        log.info(
            "target model %s loaded (%d KV bytes/token, %s)",
            self.config.get("model", "default"),
            self.core.bytes_per_token,
            describe_precision(self.core),
        )

    async def _wait_for_draft(self) -> ModelInfo:
        """The draft's info; the draft may run elsewhere and register later than this actor."""
        while True:
            try:
                return await self.peers.call(self.draft_name, "info", timeout=30)
            except (errors.UnknownActor, errors.ActorDied, errors.DeadlineExceeded):
                log.info("waiting for the draft actor '%s'", self.draft_name)
                await trio.sleep(1.0)

    def _peer_call(self, actor: str, method: str, **params: Any) -> Any:
        """From the Driver's worker thread: one call to the memory or draft actor."""
        return self.call_from_thread(actor, method, timeout=120, **params)

    async def on_registered(self) -> None:
        await self._add_holder()

    async def _add_holder(self) -> None:
        """Register the target's lease; waits for a memory actor that is restarting. Then the
        target's cost curve is calibrated (or taken from the memory actor, which kept it when this
        actor restarted), so that the first turn does not pay for the timing."""
        await register_lease(self.peers, self.memory_name, TARGET, self.name, self.core)
        # the draft registers its lease once it is registered itself: turns wait for both
        while True:
            try:
                usage = await self.peers.call(self.memory_name, "usage", timeout=10)
                if DRAFT in usage.leases:
                    break
            except (errors.ActorDied, errors.UnknownActor, errors.DeadlineExceeded):
                pass
            await trio.sleep(0.05)
        if self.driver.measure_cost:  # compute only, in a thread; the first step sends it
            async with self._core_lock:
                await trio.to_thread.run_sync(self.driver.calibration, cost_shape(usage))
        self.memory_ready.set()

    async def on_peer_died(self, name: str) -> None:
        if name != self.memory_name or not hasattr(self, "driver"):
            return
        self.memory_ready = trio.Event()
        lost = errors.ActorDied(
            "the memory actor restarted during this turn; the session stays open, send the message again",
            origin=self.name,
        )
        async with self._core_lock:
            for session in self.driver.active:
                self.driver.abort(session)
            for stream in list(self.streams.values()):
                self._fail(stream, lost)
            for session in self.core.sessions():
                self.core.drop(session)
        log.warning("the memory actor died: turns in flight failed, target caches dropped")
        self.driver.memory_restarted()
        await self._add_holder()

    # ---------------------------------------------------------------- sessions

    async def rpc_info(self, req: Empty, call: Call) -> ModelInfo:
        return ModelInfo(**model_info(self.core))

    async def rpc_open(self, req: OpenChat, call: Call) -> SessionRef:
        session = req.session or f"s-{secrets.token_urlsafe(12)}"  # unguessable unless the caller names it
        limit = int(self.config.get("max_sessions_per_client", 64))
        held = sum(1 for owner in self.owners.values() if owner == call.route)
        if held >= limit:
            # one client cannot fill the KV budget (and evict everyone else's idle sessions)
            raise errors.Overloaded(
                f"this client has {held} open sessions (max_sessions_per_client = {limit}); close one first",
                detail={"limit": "max_sessions_per_client"},
            )
        if self.core.has(session):
            raise errors.Conflict(f"session {session!r} is already open")
        self.core.open(session)
        self.owners[session] = call.route
        return SessionRef(session=session)

    def _owned(self, session: str, call: Call) -> None:
        """NotFound unless `session` is open and was opened by this caller: another client cannot
        tell someone else's session from one that does not exist."""
        if not self.core.has(session) or self.owners.get(session) != call.route:
            raise errors.NotFound(f"no session {session!r}")

    async def rpc_close(self, req: SessionRef, call: Call) -> Freed:
        self._owned(req.session, call)
        if req.session in self.streams:
            raise errors.Conflict(f"session {req.session!r} is generating; cancel its chat first")
        return Freed(freed=await self._close(req.session))

    def _close_now(self, session: str) -> int:
        """Close a session everywhere (target cache here, draft cache, memory blocks). Worker thread."""
        freed = self.core.close(session)
        self.owners.pop(session, None)
        self.draft.close(session)
        try:
            if self.memory.has(session):
                self.memory.release(session)
        except errors.ActorDied:
            pass  # a restarting memory actor starts empty: nothing of this session is left there
        return freed

    async def _close(self, session: str) -> int:
        async with self._core_lock:
            return await trio.to_thread.run_sync(self._close_now, session)

    async def rpc_sessions(self, req: Empty, call: Call) -> SessionList:
        return SessionList(sessions=self.core.sessions(), active=list(self.streams), held=self.core.held_bytes())

    # ---------------------------------------------------------------- chat

    async def rpc_chat(self, req: ChatRequest, call: Call):
        self._owned(req.session, call)
        async for chunk in self._turn(req.session, req, req.message):
            yield chunk

    async def rpc_complete(self, req: CompleteRequest, call: Call):
        self._owned(req.session, call)
        async for chunk in self._turn(req.session, req, None, messages=req.messages):
            yield chunk

    async def rpc_generate(self, req: GenerateRequest, call: Call):
        session = f"g{next(self._ids)}"
        self.core.open(session)
        async for chunk in self._turn(session, req, None, close_after=True):
            yield chunk

    async def _turn(
        self,
        session: str,
        req: ChatRequest | CompleteRequest | GenerateRequest,
        message: str | None,
        close_after: bool = False,
        messages: list[dict] | None = None,
    ):
        await self.memory_ready.wait()
        if session in self.streams:
            raise errors.Conflict(f"session {session!r} is already generating for another caller")
        if req.max_new_tokens < 1:
            raise errors.InvalidInput("max_new_tokens must be at least 1")
        if not (req.temperature >= 0 and math.isfinite(req.temperature)):
            raise errors.InvalidInput("temperature must be a finite number >= 0")
        send, recv = trio.open_memory_channel(math.inf)
        stream = TurnStream(session, send, message, messages=messages)
        self.streams[session] = stream
        self.joins.append((req, stream))
        self.wake.set()
        done = failed = False
        try:
            async with recv:
                async for chunk in recv:
                    if isinstance(chunk, Exception):
                        failed = True
                        raise chunk
                    yield chunk
                    if chunk.done:
                        done = True
                        return
        finally:
            if close_after or not (done or failed):
                # The caller went away (or the session was throwaway): the engine task stops
                # the turn and closes the session, freeing its blocks in every actor. It is
                # done there because this task may be cancelled.
                self.leaves.append(session)
                self.wake.set()

    async def background(self) -> None:
        """The one task that owns the Driver: joins, leaves, then steps, until nothing is active."""
        while True:
            await self.wake.wait()
            self.wake = trio.Event()
            while self.joins or self.leaves or self.driver.active:
                try:
                    leaves, self.leaves = self.leaves, []
                    for session in leaves:
                        stream = self.streams.pop(session, None)
                        if stream is not None:
                            stream.send.close()
                    async with self._core_lock:
                        for stream, exc in await trio.to_thread.run_sync(self._between_steps, leaves):
                            self._fail(stream, exc)
                        events = await trio.to_thread.run_sync(self.driver.step) if self.driver.active else []
                except Exception as exc:  # a failed step fails its turns, not the actor
                    log.exception("speculative step failed")
                    await self._abort_active(exc)
                    continue
                for event in events:
                    self._dispatch(event, len(events))
                steps = [e.step for e in events if e.step is not None]
                if steps:
                    self.metrics.set(
                        "accepted_per_step",
                        sum(x.accepted for x in steps) / len(steps),
                        "Mean accepted drafts per step, last batch",
                    )
                    self.metrics.set("batch", len(steps), "Sessions in the last step")

    async def _abort_active(self, exc: Exception) -> None:
        """Fail every turn in the batch (their sessions stay open, their turn state is dropped)."""
        for session in self.driver.active:
            self.driver.abort(session)
            stream = self.streams.get(session)
            if stream is not None:
                self._fail(stream, exc)
            with trio.move_on_after(5):
                try:
                    await self.peers.call(self.memory_name, "finish", session=session)
                except errors.SpecmemoError:
                    pass

    def _between_steps(self, leaves: list[str]) -> list[tuple[TurnStream, Exception]]:
        """Leaves, then joins (prefill forwards included); answers the joins that failed.

        Runs in the worker thread, so it never touches a stream's channel (trio's channels
        belong to the trio thread): the engine task fails those streams afterwards.
        """
        for session in leaves:
            if session in self.driver.active:
                self.driver.leave(session)
            if self.core.has(session):
                self._close_now(session)
        failed: list[tuple[TurnStream, Exception]] = []
        joins, self.joins = self.joins, []
        for req, stream in joins:
            if stream.session not in self.streams:
                continue
            try:
                if stream.messages is not None:
                    ids, keep = self.core.conversation_prompt(stream.session, stream.messages)
                elif stream.message is not None:
                    ids, keep = self.core.chat_prompt(stream.session, stream.message)
                else:
                    assert isinstance(req, GenerateRequest), "a stream without messages is a generate call"
                    ids, keep = self.core.check_prompt(stream.session, req.prompt_ids)
                gamma = req.gamma if req.gamma is not None else self.gamma
                tree = req.tree if req.tree is not None else self.tree
                turn = (req.max_new_tokens, req.temperature, req.seed, gamma, tree)
                self.driver.join(stream.session, ids, keep, *turn, lookup=self.lookup)
            except (EngineError, errors.SpecmemoError) as exc:
                failed.append((stream, exc))
        return failed

    def _fail(self, stream: TurnStream, exc: BaseException) -> None:
        mapped = self.map_error(exc) or errors.Internal(f"{type(exc).__name__}: {exc}")
        self.streams.pop(stream.session, None)
        stream.deliver(mapped)
        stream.send.close()

    def _dispatch(self, event: TurnEvent, batch: int) -> None:
        """Stream one session's event of a step that batched `batch` sessions to its caller."""
        stream = self.streams.get(event.session)
        if stream is None:
            return
        if event.error is not None:
            self._fail(stream, event.error)
            return
        tokens = event.tokens
        text, delta = stream.extend(tokens, self.core.tokenizer, bool(event.done))
        stats = dict(event.stats)
        stats["tokens_per_s"], stats["seconds"] = stream.rate()
        if event.done:
            self.metrics.set("tokens_per_s", stats["tokens_per_s"], "Tokens/s of the last finished turn")
        reply = ""
        if event.done:
            self.streams.pop(stream.session, None)
            if stream.messages is not None:
                reply = self.core.end_conversation(stream.session, stream.messages, np.asarray(stream.reply))
            elif stream.message is not None:
                reply = self.core.end_turn(stream.session, stream.message, np.asarray(stream.reply))
            else:
                reply = text
        step = None if event.step is None else StepInfo(**event.step.as_dict(), batch=batch)
        stream.deliver(ChatChunk(tokens=tokens, text=delta, done=bool(event.done), step=step, stats=stats, reply=reply))
        if event.done:
            stream.send.close()
