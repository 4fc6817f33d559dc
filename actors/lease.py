"""A model actor's KV lease at the memory actor: registered once the actor is, and again after
the memory actor restarts (it forgets every lease)."""

from __future__ import annotations

import logging
from typing import Any

import trio

from specmemo.actors.engine.prefix import PREFIXES, PrefixStore
from specmemo.protocol import errors
from specmemo.protocol.async_client import AsyncCaller

log = logging.getLogger(__name__)


async def register_lease(peers: AsyncCaller, memory: str, holder: str, actor: str, core: Any) -> None:
    """Register `holder`'s bytes per token and weights for `actor`, and reserve its prefix store's
    bytes (a budget too small for them turns the store off: sessions come first); waits out a
    memory actor that is restarting or not yet registered."""
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
            if core.prefixes.capacity_bytes:
                try:
                    await peers.call(
                        memory, "reserve", owner=actor, key=PREFIXES, nbytes=core.prefixes.capacity_bytes, timeout=10
                    )
                except errors.OverBudget as exc:
                    log.warning("no prefix store for %s: %s", actor, exc)
                    core.prefixes = PrefixStore(0, core.bytes_per_token)
            return
        except (errors.ActorDied, errors.UnknownActor, errors.DeadlineExceeded):
            await trio.sleep(0.05)
