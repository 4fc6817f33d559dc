"""How a method name becomes a call of an actor's handler: looked up once per method, with its
request and reply classes, and whether it is answered inline (a plain ``def``) or by a task."""

from __future__ import annotations

import inspect
import types
from typing import Any, NamedTuple

from specmemo.protocol import methods
from specmemo.protocol.errors import UnknownMethod

from .base import Actor


class Handler(NamedTuple):
    fn: Any
    request: type  # the request message class
    result: type  # the reply message class, or the chunk class of a streaming method
    streams: bool
    inline: bool  # a plain ``def``: run at once on the event loop, no task


class Handlers:
    """The handlers of one actor, by method name."""

    def __init__(self, actor: Actor) -> None:
        self.actor = actor
        self._table: dict[str, Handler] = {}

    def get(self, method: str) -> Handler:
        """The handler of ``method`` (UnknownMethod if the actor has none)."""
        handler = self._table.get(method)
        if handler is None:
            spec = methods.lookup(self.actor.kind, method)
            fn = getattr(self.actor, f"rpc_{method}", None)
            if fn is None:
                raise UnknownMethod(f"{self.actor.name} does not implement '{method}'")
            inline = not (spec.streams or inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn))
            result = spec.chunk if spec.streams else spec.reply
            assert result is not None, f"{spec.name} declares no reply class"
            handler = self._table[method] = Handler(fn, spec.request, result, spec.streams, inline)
        return handler

    def to_task(self, method: str) -> None:
        """Serve ``method`` from a task from now on: its plain ``def`` returned an awaitable (a
        decorated or partial ``async def`` that inspection missed)."""
        self._table[method] = self._table[method]._replace(inline=False)


_PLAIN_RESULTS: set[type] = {dict, type(None)}


def is_awaitable(value: Any) -> bool:
    """Whether an inline handler's result must be awaited (cached per result type)."""
    kind = type(value)
    if kind in _PLAIN_RESULTS:
        return False
    if inspect.isawaitable(value):
        return True
    if kind is not types.GeneratorType:  # a generator's awaitability depends on its code
        _PLAIN_RESULTS.add(kind)
    return False
