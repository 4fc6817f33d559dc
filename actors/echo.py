"""A small built-in actor for tests and benchmarks: echo, sleep, fail and count on request."""

from __future__ import annotations

import os

import trio

from specmemo.protocol.errors import BadRequest
from specmemo.protocol.methods import (
    CountChunk,
    CountRequest,
    EchoReply,
    EchoRequest,
    Empty,
    FailRequest,
    SleepReply,
    SleepRequest,
)

from .base import Actor, Call


class EchoActor(Actor):
    kind = "echo"

    def rpc_echo(self, req: EchoRequest, call: Call) -> EchoReply:
        return EchoReply(data=req.data)

    async def rpc_sleep(self, req: SleepRequest, call: Call) -> SleepReply:
        start = trio.current_time()
        await trio.sleep(max(0.0, req.seconds))
        return SleepReply(slept=trio.current_time() - start)

    def rpc_fail(self, req: FailRequest, call: Call) -> Empty:
        if req.kind == "exit":
            os._exit(3)
        if req.kind == "bad_request":
            raise BadRequest(req.message)
        raise RuntimeError(req.message)

    async def rpc_count(self, req: CountRequest, call: Call):
        for i in range(req.n):
            if req.delay:
                await trio.sleep(req.delay)
            yield CountChunk(i=i)
