"""The memory actor: the memory-manager core behind the protocol, with leases.

Every grant is a lease of a live actor. Holders ("draft", "target") are registered by the
actor that holds their caches, and sessions by the actor that drives them; when the kernel
reports one of those actors dead (a NOTICE), its blocks are reclaimed at once: a dead holder's
blocks are freed and its sessions marked for a rebuild, a dead owner's sessions are released.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from specmemo.actors.engine import errors as engine_errors
from specmemo.actors.engine.manager import MemoryManager
from specmemo.protocol import errors
from specmemo.protocol.methods import (
    AddHolder,
    Answers,
    CommitBatch,
    Costs,
    Empty,
    Freed,
    GrantAnswer,
    GrantBatch,
    HasReply,
    HolderReply,
    OpenSession,
    PrefillRequest,
    Reserve,
    ReserveReply,
    SessionRef,
    Unreserve,
    Usage,
)

from .base import Actor, Call

log = logging.getLogger("specmemo.memory")

#: How the engine's errors cross the wire (shared by the draft and verifier actors).
ENGINE_ERRORS: dict[type[BaseException], type[errors.SpecmemoError]] = {
    engine_errors.OverBudget: errors.OverBudget,
    engine_errors.UnknownSession: errors.NotFound,
    engine_errors.SessionBusy: errors.Conflict,
    engine_errors.ContextTooLong: errors.InvalidInput,
    engine_errors.BadPrompt: errors.InvalidInput,
    engine_errors.TokenizerMismatch: errors.InvalidInput,
    engine_errors.ModelNotFound: errors.NotFound,
    engine_errors.CorruptModel: errors.InvalidInput,
}


def budget_bytes(config: dict[str, Any]) -> int:
    if "budget_bytes" in config:
        return int(config["budget_bytes"])
    return int(float(config.get("budget_mb", 512)) * (1 << 20))


class MemoryActor(Actor):
    kind = "memory"
    errors = ENGINE_ERRORS

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name, config)
        self.manager = MemoryManager(
            budget_bytes(config),
            block_tokens=int(config.get("block_tokens", 16)),
            spare_blocks=int(config.get("spare_blocks", 1)),
            gamma_max=int(config.get("gamma_max", 8)),
            cost_ratio=float(config.get("cost_ratio", 0.1)),
            width_max=int(config.get("tree_width", 1)),
            memory_budget=int(float(config["memory_mb"]) * (1 << 20)) if "memory_mb" in config else None,
        )
        self.leases: dict[str, str] = {}  # holder -> actor holding its caches
        self.owners: dict[str, str] = {}  # session -> actor driving it

    async def on_peer_died(self, name: str) -> None:
        for holder, actor in list(self.leases.items()):
            if actor == name:
                freed = self.manager.release_holder(holder)
                del self.leases[holder]
                log.info(
                    "lease of %s (%s) reclaimed: %d bytes, %d sessions to rebuild",
                    holder,
                    name,
                    freed["freed"],
                    len(freed["sessions"]),
                )
        held = self.manager.release_reservations(name)
        if held:
            log.info("reservations of %s released: %d bytes", name, held)
        for session, owner in list(self.owners.items()):
            if owner == name:
                released = self.manager.release(session)
                del self.owners[session]
                log.info("session %s of %s released: %d bytes", session, name, released)

    def rpc_add_holder(self, req: AddHolder, call: Call) -> HolderReply:
        self.manager.add_holder(req.holder, req.bytes_per_token, req.weight_bytes)
        self.leases[req.holder] = req.actor
        return HolderReply(budget=self.manager.budget, block_tokens=self.manager.block_tokens)

    def rpc_open(self, req: OpenSession, call: Call) -> Empty:
        self.manager.open_session(req.session)
        self.owners[req.session] = req.owner
        return Empty()

    def rpc_has(self, req: SessionRef, call: Call) -> HasReply:
        return HasReply(has=self.manager.has(req.session))

    def rpc_prefill(self, req: PrefillRequest, call: Call) -> GrantAnswer:
        return GrantAnswer(**self.manager.prefill(req.session, req.keep, req.add))

    def rpc_grant_batch(self, req: GrantBatch, call: Call) -> Answers:
        answers = self.manager.grant_batch([dataclasses.asdict(r) for r in req.requests])
        granted = [a["gamma"] for a in answers if "gamma" in a]
        if granted:
            self.metrics.set("gamma", sum(granted) / len(granted), "Mean γ of the last grant")
        self._gauges()
        return Answers(answers=[GrantAnswer(**a) for a in answers])

    def rpc_commit_batch(self, req: CommitBatch, call: Call) -> Answers:
        answers = self.manager.commit_batch([dataclasses.asdict(r) for r in req.requests])
        self._gauges()
        return Answers(answers=[GrantAnswer(**a) for a in answers])

    def _gauges(self) -> None:
        u = self.manager.usage()
        self.metrics.set("kv_budget_bytes", u["budget"], "KV budget of the deployment")
        self.metrics.set("kv_live_bytes", u["live"], "KV bytes granted now")
        self.metrics.set("kv_peak_bytes", u["peak"], "Most KV bytes ever granted at once")
        self.metrics.set("sessions", len(u["sessions"]), "Open sessions")
        self.metrics.set("evictions", u["evictions"], "Idle sessions evicted under pressure")

    def rpc_finish(self, req: SessionRef, call: Call) -> Empty:
        self.manager.finish(req.session)
        return Empty()

    def rpc_release(self, req: SessionRef, call: Call) -> Freed:
        self.owners.pop(req.session, None)
        freed = self.manager.release(req.session)
        self._gauges()
        return Freed(freed=freed)

    def rpc_release_holder(self, req: SessionRef, call: Call) -> Freed:
        self.leases.pop(req.session, None)
        return Freed(**self.manager.release_holder(req.session))

    def rpc_reserve(self, req: Reserve, call: Call) -> ReserveReply:
        out = self.manager.reserve(req.owner, req.key, req.nbytes)
        self._gauges()
        return ReserveReply(**out)

    def rpc_unreserve(self, req: Unreserve, call: Call) -> Freed:
        freed = self.manager.unreserve(req.owner, req.key)
        self._gauges()
        return Freed(freed=freed)

    def rpc_observe_costs(self, req: Costs, call: Call) -> Empty:
        self.manager.observe_costs(req.draft_s, req.m, req.target_s, req.anchor)
        return Empty()

    def rpc_usage(self, req: Empty, call: Call) -> Usage:
        return Usage(**self.manager.usage(), leases=dict(self.leases))
