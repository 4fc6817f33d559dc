"""The draft actor: the draft model and its per-session caches (a :class:`DraftCore`).

Token ids and probabilities cross the wire as zero-copy buffers. Its KV bytes are a lease
registered with the memory actor at start, and again whenever the memory actor restarts (the
new process starts empty: every cache is dropped, the verifier rebuilds them on the next
turn). When the verifier that drives its sessions dies, it drops their caches.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from specmemo.actors.engine import DraftCore
from specmemo.actors.engine.driver import DRAFT
from specmemo.actors.engine.prefix import DEFAULT_TOKENS as DEFAULT_PREFIX_TOKENS
from specmemo.protocol.errors import BadRequest
from specmemo.protocol.methods import (
    AcceptBatch,
    DraftOpen,
    Empty,
    HasReply,
    Held,
    HeldEach,
    ModelInfo,
    Proposal,
    ProposeRequest,
    SessionRef,
)

from .base import Actor, Call
from .lease import register_lease
from .memory import ENGINE_ERRORS
from .modelconfig import describe_precision, load_actor_model, model_info, preload_actor_model, set_model_gauges

log = logging.getLogger("specmemo.draft")


class DraftActor(Actor):
    kind = "draft"
    errors = ENGINE_ERRORS

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name, config)
        self.memory = config.get("memory", "memory")
        self.verifier = config.get("verifier", "verifier")
        self.peers.kinds.update({self.memory: "memory", self.verifier: "verifier"})
        self.core: DraftCore  # loaded in start()
        self._accept_calls = 0

    #: Imports for the zygote, before it forks this actor (see :mod:`specmemo.actors.zygote`).
    preload = staticmethod(preload_actor_model)

    async def on_start(self) -> None:
        import torch

        torch.set_num_threads(int(self.config.get("threads", torch.get_num_threads())))
        model, _ = await self.run_sync(load_actor_model, self.config, "draft")
        rows = self.config.get("vocab_rows", "auto")
        self.core = DraftCore(
            model,
            int(self.config.get("block_tokens", 16)),
            int(self.config.get("spare_blocks", 1)),
            None if rows == "auto" else int(rows),
            int(self.config.get("prefix_tokens", DEFAULT_PREFIX_TOKENS)),
        )
        set_model_gauges(self.metrics, self.core)
        self.metrics.set("vocab_rows", self.core.vocab_rows, "Base head rows of a session's draft forwards (0: all)")
        log.info(
            "draft model %s loaded (%d KV bytes/token, %s, head rows: %s)",
            self.config.get("model", "default"),
            self.core.bytes_per_token,
            describe_precision(self.core),
            f"the first {self.core.vocab_rows} + each session's context" if self.core.vocab_rows else "all",
        )

    async def on_registered(self) -> None:
        await self._add_holder()

    async def _add_holder(self) -> None:
        """Register the draft's lease; waits for a memory actor that is restarting."""
        await register_lease(self.peers, self.memory, DRAFT, self.name, self.core)

    async def on_peer_died(self, name: str) -> None:
        if self.core is None or name not in (self.verifier, self.memory):
            return
        async with self._core_lock:
            for session in self.core.sessions():
                self.core.close(session)
        if name == self.memory:
            await self._add_holder()
            log.info("caches dropped and lease registered again after the memory actor restarted")

    async def rpc_info(self, req: Empty, call: Call) -> ModelInfo:
        return ModelInfo(**model_info(self.core))

    async def rpc_has(self, req: SessionRef, call: Call) -> HasReply:
        return HasReply(has=self.core.has(req.session))

    async def rpc_open(self, req: DraftOpen, call: Call) -> Held:
        return Held(held=await self.run_sync(self.core.open, req.session, req.token_ids, req.blocks))

    async def rpc_extend(self, req: DraftOpen, call: Call) -> Held:
        return Held(held=await self.run_sync(self.core.extend, req.session, req.token_ids, req.keep, req.blocks))

    async def rpc_propose(self, req: ProposeRequest, call: Call) -> Proposal:
        _check_rows(req)
        out = await self.run_sync(
            self.core.propose,
            req.sessions,
            req.gammas,
            req.blocks,
            req.temperature,
            req.seeds,
            req.widths,
            req.rates,
            req.forwards,
        )
        return Proposal(
            tokens=out["tokens"],
            parents=out["parents"],
            probs=out["probs"],
            seconds=out["seconds"],
            token_seconds=out["token_seconds"],
            forwards=out["forwards"],
        )

    async def rpc_accept_batch(self, req: AcceptBatch, call: Call) -> HeldEach:
        r = req.requests
        held = await self.run_sync(
            self.core.accept_batch,
            [x.session for x in r],
            [x.accepted for x in r],
            [np.asarray(x.tokens) for x in r],
            [x.blocks for x in r],
            [x.path for x in r],
        )
        self._accept_calls += 1
        self.metrics.set("accept_calls", self._accept_calls, "Accept calls served (one per speculative step)")
        return HeldEach(held=held)

    async def rpc_close(self, req: SessionRef, call: Call) -> Held:
        return Held(held=self.core.close(req.session))


def _check_rows(req: ProposeRequest) -> None:
    # every per-session list has one entry a session, and no count is negative
    per_row = {k: getattr(req, k) for k in ("gammas", "blocks", "seeds", "widths", "rates", "forwards")}
    if isinstance(req.temperature, list):
        per_row["temperature"] = req.temperature
    wrong = [k for k, v in per_row.items() if v is not None and len(v) != len(req.sessions)]
    if wrong:
        raise BadRequest(f"propose: {', '.join(wrong)} must have one entry a session ({len(req.sessions)})")
    counts = [*req.gammas, *req.blocks, *(req.widths or []), *(req.forwards or [])]
    if any(n < 0 for n in counts) or any(w < 1 for w in req.widths or []):
        raise BadRequest("propose: node, block and forward counts must be >= 0 and widths >= 1")
