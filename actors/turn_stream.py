"""One chat turn being streamed to a client: the reply so far, its text as UTF-8-safe deltas,
and the channel its chunks (or its error) go to."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import trio


@dataclass
class TurnStream:
    session: str
    send: trio.MemorySendChannel
    message: str | None  # None for raw-id generation (no chat history)
    messages: list[dict] | None = None  # a whole conversation (`complete`)
    reply: list[int] = field(default_factory=list)
    text: str = ""
    started: float = field(default_factory=time.perf_counter)

    def extend(self, tokens: Any, tokenizer: Any, done: bool) -> tuple[str, str]:
        """Add a step's tokens; answers (the whole text, the delta to send). A step that ends
        inside a multi-byte character sends nothing until the character is whole."""
        self.reply.extend(int(t) for t in tokens)
        text = tokenizer.decode(self.reply, skip_special_tokens=True) if tokenizer is not None else ""
        if done or not text.endswith("\ufffd"):
            delta, self.text = text[len(self.text) :], text
        else:
            delta = ""
        return text, delta

    def rate(self) -> tuple[float, float]:
        """(tokens per second, seconds) of the turn so far."""
        elapsed = time.perf_counter() - self.started
        return (len(self.reply) / elapsed if elapsed > 0 else 0.0), elapsed

    def deliver(self, item: Any) -> None:
        """Queue a chunk or an error for the task streaming this turn; its caller may be gone."""
        try:
            self.send.send_nowait(item)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
