"""An echo actor whose handlers answer with the wrong types: another message class, a map
that lacks a required field, a stream chunk that is no message. The runtime must turn each
into an ``Internal`` error and keep serving."""

from __future__ import annotations

from specmemo.actors.echo import EchoActor
from specmemo.protocol.methods import CountChunk, SleepReply


class WrongReplies(EchoActor):
    def rpc_echo(self, req, call):
        return SleepReply(slept=1.0)  # echo.echo declares EchoReply

    async def rpc_sleep(self, req, call):
        return {"seconds": req.seconds}  # SleepReply needs `slept`

    async def rpc_count(self, req, call):
        yield CountChunk(i=0)
        yield 1  # a chunk must be a CountChunk
