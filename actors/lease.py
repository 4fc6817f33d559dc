"""A model actor's KV lease at the memory actor: registered once the actor is, and again after
the memory actor restarts (it forgets every lease)."""

from __future__ import annotations

from typing import Any

import trio

from specmemo.protocol import errors
from specmemo.protocol.async_client import AsyncCaller


async def register_lease(peers: AsyncCaller, memory: str, holder: str, actor: str, core: Any) -> None:
    """Register `holder`'s bytes per token and weights for `actor`; waits out a memory actor that
    is restarting or not yet registered."""
    while True:
        try:
            await peers.call(
                memory,
                "add_holder",
                holder=holder,
                bytes_per_token=core.bytes_per_token,
                actor=actor,
                weight_bytes=core.weight_bytes,
                timeout=10,
            )
            return
        except (errors.ActorDied, errors.UnknownActor, errors.DeadlineExceeded):
            await trio.sleep(0.05)
