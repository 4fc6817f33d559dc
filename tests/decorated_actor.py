"""An echo actor whose ``sleep`` handler is an ``async def`` behind a plain decorator, so that
``inspect`` sees a plain function: the runtime must still await what it returns."""

from __future__ import annotations

import functools

from specmemo.actors.echo import EchoActor


def logged(fn):
    @functools.wraps(fn)
    def wrapper(self, req, call):  # a sync wrapper that hands back the coroutine
        return fn(self, req, call)

    wrapper.__wrapped__ = None  # hide the coroutine function from inspect.unwrap too
    return wrapper


class DecoratedEcho(EchoActor):
    rpc_sleep = logged(EchoActor.rpc_sleep)
