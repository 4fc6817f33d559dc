"""One chat completion of the HTTP gateway, from the verifier's stream to OpenAI response bodies:
picks or opens a session, streams ``verifier.complete``, applies the stop strings, and leaves
the session pooled (finished) or closed (cut short).
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

import trio

from specmemo.protocol import errors
from specmemo.protocol.methods import ChatChunk

from .openai_api import Completion, HttpError, from_wire_error

if TYPE_CHECKING:
    from .http import HttpActor


class Turn:
    """One chat completion: picks or opens a session, streams `verifier.complete`, applies the
    stop strings, and leaves the session pooled (finished) or closed (cut short)."""

    def __init__(self, actor: HttpActor, req: Completion) -> None:
        self.actor, self.req = actor, req
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.session: str | None = None
        self.stream: Any = None  # the verifier stream, once open
        self.text = ""  # the reply so far, stop strings applied
        self.reply_tokens = 0
        self.stats: dict[str, Any] = {}
        self.gammas: list[int] = []
        self.finished = False  # the verifier ended the turn (EOS or max_tokens)
        self.finish_reason = "length"
        self.started = time.perf_counter()
        self.first_token_s: float | None = None

    async def start(self) -> ChatChunk:
        a = self.actor
        try:
            for stale in a.pool.surplus():
                a.pool.forget(stale)
                try:
                    await a.peers.call(a.verifier, "close", session=stale, timeout=30)
                except errors.SpecmemoError:
                    pass
            self.session = a.pool.pick(self.req.messages)
            if self.session is None:
                self.session = (await a.peers.call(a.verifier, "open", session="", timeout=30)).session
            a.pool.take(self.session)
            self.stream = a.peers.stream(
                a.verifier,
                "complete",
                session=self.session,
                messages=self.req.messages,
                max_new_tokens=self.req.max_tokens,
                temperature=self.req.temperature,
                seed=self.req.seed,
                gamma=self.req.gamma,
                tree=self.req.tree,
                timeout=a.deadline_s,
            )
            return await self.stream.__anext__()
        except errors.SpecmemoError as exc:
            raise from_wire_error(exc) from None
        except StopAsyncIteration:
            raise HttpError(502, "the verifier ended the turn without a reply", "server_error") from None

    def _take(self, chunk: ChatChunk) -> tuple[str, bool]:
        """The text this chunk adds (cut at a stop string), and whether the turn is over."""
        if self.first_token_s is None:
            self.first_token_s = time.perf_counter() - self.started
        self.stats = chunk.stats or self.stats
        if chunk.step:
            self.gammas.append(int(chunk.step.gamma))
        self.reply_tokens += len(chunk.tokens)
        done = chunk.done
        self.finished = self.finished or done
        before = self.text
        whole = chunk.reply or before + chunk.text if done else before + chunk.text
        for stop in self.req.stop:
            at = whole.find(stop, max(0, len(before) - len(stop) + 1))
            if at >= 0:
                self.text, self.finish_reason = whole[:at], "stop"
                return self.text[len(before) :], True
        self.text = whole
        if done:
            self.finish_reason = "length" if self.reply_tokens >= self.req.max_tokens else "stop"
        return whole[len(before) :], done

    async def _next(self) -> ChatChunk | None:
        try:
            return await self.stream.__anext__()
        except errors.SpecmemoError as exc:
            raise from_wire_error(exc) from None
        except StopAsyncIteration:
            return None

    async def collect(self, first: ChatChunk) -> dict:
        chunk: ChatChunk | None = first
        while chunk is not None:
            _, over = self._take(chunk)
            chunk = None if over else await self._next()
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.actor.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.text},
                    "finish_reason": self.finish_reason,
                }
            ],
            "usage": self.usage(),
            "specmemo": self.extension(),
        }

    async def events(self, first: ChatChunk):
        head = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.actor.model}
        yield {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        chunk: ChatChunk | None = first
        while chunk is not None:
            delta, over = self._take(chunk)
            if delta:
                yield {**head, "choices": [{"index": 0, "delta": {"content": delta}, "finish_reason": None}]}
            try:
                chunk = None if over else await self._next()
            except HttpError as exc:
                yield exc.body()
                return
        yield {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": self.finish_reason}]}
        if self.req.include_usage:
            yield {**head, "choices": [], "usage": self.usage(), "specmemo": self.extension()}

    def usage(self) -> dict:
        prompt = int(self.stats.get("prompt_tokens", 0))
        return {
            "prompt_tokens": prompt,
            "completion_tokens": self.reply_tokens,
            "total_tokens": prompt + self.reply_tokens,
        }

    def extension(self) -> dict:
        return {
            "session": self.session,
            "prefilled_tokens": int(self.stats.get("prefilled_tokens", 0)),
            "reused_tokens": int(self.stats.get("prompt_tokens", 0)) - int(self.stats.get("prefilled_tokens", 0)),
            "accepted_per_step": float(self.stats.get("mean_accepted", 0.0)),
            "gamma_mean": sum(self.gammas) / len(self.gammas) if self.gammas else 0.0,
            "tokens_per_s": float(self.stats.get("tokens_per_s", 0.0)),
            "time_to_first_token_s": self.first_token_s,
        }

    async def close(self) -> None:
        """Pool the session with the conversation it now holds when the verifier finished the turn;
        otherwise (cut short by a stop string, a disconnect or an error) close it and forget it."""
        a = self.actor
        if self.stream is not None:
            await self.stream.aclose()
        if self.session is None:
            return
        if self.finished:
            a.pool.finish(self.session, self.req.messages + [{"role": "assistant", "content": self.text}])
            return
        a.pool.forget(self.session)
        with trio.move_on_after(10):
            try:  # a cancelled turn's session is closed by the verifier itself: NotFound or Conflict here
                await a.peers.call(a.verifier, "close", session=self.session, timeout=10)
            except errors.SpecmemoError:
                pass
