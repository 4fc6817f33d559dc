"""The memory manager's core: one byte budget for every KV cache, draft and target, all sessions.

Holders (the draft and the target side, later the actors owning them) register their bytes per
token; each session's cache in each holder is a list of logical blocks of `block_tokens`
tokens. A session goes through turns: `prefill` (its context grows by a prompt), then steps of
`grant` (room for γ candidate tokens) and `commit` (the tokens kept; rejected blocks go back
at once), then `finish` (idle, kept for the next turn) or `release` (gone).

Under pressure a grant first shrinks γ (down to 0, plain decoding), then evicts idle sessions,
least recently used first (their holders drop their caches and rebuild them from token ids at
the session's next turn), then raises `OverBudget`. No call ever takes the live bytes above the
budget, and a call that raises changes nothing.

Other memory on the same machine takes its bytes from the same budget: `reserve` holds bytes for
an owner under a key (the solver's plan of a matrix and its solve vectors), evicting idle
sessions first as a grant would, and `unreserve` gives them back.

Every answer is plain data (ints, str, lists and dicts of those), so an actor can ship it as is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .acceptance import RankAcceptance
from .blocks import BlockIds, blocks_after_rollback, blocks_for
from .errors import EngineError, OverBudget, SessionBusy, UnknownSession, as_answer
from .memory_model import CostCurve, chain_length, gamma_for_budget, kv_tokens, tree_forwards, tree_shape
from .reservations import Reservations

EXPLORE_EVERY = 4


@dataclass
class _Session:
    acceptance: RankAcceptance  # the rank acceptance counts (acceptance.py)
    context: int = 0
    blocks: dict[str, list[int]] = field(default_factory=dict)
    lost: set[str] = field(default_factory=set)
    busy: bool = False
    last_used: int = 0
    gamma: int | None = None
    width: int = 1
    plain_steps: int = 0  # steps in a row the policy granted γ = 0


class MemoryManager(Reservations):
    """Grants KV blocks under `budget_bytes`; see the module doc for the protocol."""

    def __init__(
        self,
        budget_bytes: int,
        block_tokens: int = 16,
        spare_blocks: int = 1,
        gamma_max: int = 8,
        cost_ratio: float = 0.1,
        fraction: float = 1.0,
        prior_alpha: float = 0.7,
        memory_budget: int | None = None,
        width_max: int = 1,
    ):
        """budget_bytes: the KV budget. memory_budget: if given, the budget of weights and KV
        together; the KV budget is then what the registered holders' weights leave of it.
        fraction: a step wants the smallest γ whose expected speedup is within this fraction of
        the best (1.0: the best; the budget then shrinks it only when it must). The lower-bound
        budget of the memory model is computed at 0.96 (`lower_bound_budget`), a separate question.
        gamma_max: the most draft nodes per step (a chain's γ, a tree's N). width_max: the widest
        tree a step may get (1: chains only); the shape is chosen from the rank acceptance rates."""
        assert budget_bytes >= 0 and block_tokens >= 1 and spare_blocks >= 0 and gamma_max >= 0 and width_max >= 1
        self.budget = budget_bytes if memory_budget is None else memory_budget
        self.memory_budget = memory_budget
        self.block_tokens, self.spare_blocks = block_tokens, spare_blocks
        self.gamma_max, self.fraction, self.prior_alpha, self.width_max = gamma_max, fraction, prior_alpha, width_max
        self.costs = CostCurve(cost_ratio)
        self._weights: dict[str, int] = {}
        self._bytes_per_token: dict[str, int] = {}
        self._sessions: dict[str, _Session] = {}
        self._ids = BlockIds()
        self._reserved: dict[str, dict[str, int]] = {}  # owner -> key -> bytes (not KV)
        self._live = self._peak = self._clock = self._evictions = 0

    # holders

    def add_holder(self, holder: str, bytes_per_token: int, weight_bytes: int = 0) -> None:
        """Register a cache holder ("draft", "target", ...), its KV bytes per token and the bytes
        of its model's weights (counted in `usage`; taken from `memory_budget` when one is set)."""
        assert bytes_per_token > 0 and weight_bytes >= 0
        known = self._bytes_per_token.get(holder)
        assert known in (None, bytes_per_token), (holder, known, bytes_per_token)
        weights = {**self._weights, holder: weight_bytes}
        budget = self.budget if self.memory_budget is None else self.memory_budget - sum(weights.values())
        need = sum(self.block_tokens * bpt for bpt in {**self._bytes_per_token, holder: bytes_per_token}.values())
        if budget < max(need, self._live):
            raise OverBudget(
                f"KV budget {budget} B (after {sum(weights.values())} B of weights) is below one block of every"
                f" cache ({need} B) or the {self._live} B granted now"
            )
        self._bytes_per_token[holder] = bytes_per_token
        self._weights, self.budget = weights, budget

    def block_bytes(self, holder: str) -> int:
        return self.block_tokens * self._bytes_per_token[holder]

    def release_holder(self, holder: str) -> dict:
        """Reclaim every block `holder` owns (its actor died). The sessions listed must rebuild
        that holder's cache from token ids at their next grant or prefill."""
        freed, sessions = 0, []
        for sid, s in self._sessions.items():
            if s.blocks.get(holder):
                freed += self._set_blocks(sid, s, holder, 0)
                sessions.append(sid)
            if holder in s.blocks:
                s.lost.add(holder)
        return {"freed": freed, "sessions": sessions}

    # sessions

    def has(self, session: str) -> bool:
        return session in self._sessions

    def open_session(self, session: str) -> None:
        if session in self._sessions:
            raise SessionBusy(f"session {session!r} is already open")
        blocks: dict[str, list[int]] = {h: [] for h in self._bytes_per_token}
        self._sessions[session] = _Session(RankAcceptance.empty(self.width_max), blocks=blocks, last_used=self._tick())

    def prefill(self, session: str, keep: int, add: int) -> dict:
        """Start a turn: the context becomes its first `keep` tokens plus `add` new ones, all but the
        last resident in every cache. Answers {"blocks": {holder: n}, "evicted": [...],
        "rebuild": [holders whose cache must be recomputed from token id 0]}."""
        s = self._get(session)
        assert 0 <= keep <= s.context and add >= 0 and keep + add >= 1, (keep, add, s.context)
        rebuild = sorted(h for h in self._bytes_per_token if h in s.lost or h not in s.blocks)
        length = keep + add
        need = {h: blocks_for(length - 1, self.block_tokens) for h in self._bytes_per_token}
        evicted = self._make_room(session, self._extra_bytes(s, need))
        self._apply(session, s, need, rebuild)
        s.lost.clear()
        s.context, s.busy, s.gamma, s.last_used = length, True, None, self._tick()
        return {"blocks": self._block_counts(s), "evicted": evicted, "rebuild": rebuild}

    def grant(
        self,
        session: str,
        gamma: int | None = None,
        limit: int | None = None,
        width: int | None = None,
        forwards: int | None = None,
    ) -> dict:
        """Room for one step of γ <= `gamma` draft nodes (default: the tree (N*, w*, F*) the memory
        model picks from the session's rank rates and the cost curve) and γ <= `limit` (tokens or
        context left). `width` caps the width (default: `width_max` when chosen, 1 for a fixed γ),
        `forwards` a tree's draft forwards F, and with them N to F·w (a chain feeds every node; F
        defaults to F* for the N granted, γ for a fixed γ; nodes past the first F − 1 are leaves).
        Answers {"gamma", "width", "forwards", "rates" (a_1..a_w), "blocks", "evicted", "rebuild"}."""
        s = self._get(session)
        cap = max(1, min(width if width is not None else (self.width_max if gamma is None else 1), self.width_max))
        rates = s.acceptance.rates(self.prior_alpha, cap)  # what the shape is priced with, and grown by
        forwards_cap = None if forwards is None or cap == 1 else max(1, forwards)
        if gamma is None:
            want, wide = self._wanted_shape(s, cap, rates, forwards_cap)
        else:
            want, wide = min(gamma, self.gamma_max, (forwards_cap or gamma) * cap), cap
        if gamma is None and want == 0 and self.gamma_max > 0:
            # α is measured only while drafting: every EXPLORE-th plain step drafts one token
            s.plain_steps += 1
            if s.plain_steps >= EXPLORE_EVERY:
                want, s.plain_steps = 1, 0
        elif gamma is None:
            s.plain_steps = 0
        want = max(0, want if limit is None else min(want, limit))
        rebuild = sorted(h for h in self._bytes_per_token if h in s.lost or h not in s.blocks)
        held = {h: (0 if h in rebuild else len(s.blocks.get(h, []))) for h in self._bytes_per_token}
        free = self.budget - self._live + sum(self._session_holder_bytes(s, h) for h in rebuild)
        g = gamma_for_budget(free, s.context, held, self._bytes_per_token, self.block_tokens, want)
        evicted = []
        if g is None:
            need0 = {h: max(held[h], blocks_for(kv_tokens(s.context, 0), self.block_tokens)) for h in held}
            evicted = self._make_room(session, self._extra_bytes(s, need0))
            free = self.budget - self._live + sum(self._session_holder_bytes(s, h) for h in rebuild)
            g = gamma_for_budget(free, s.context, held, self._bytes_per_token, self.block_tokens, want)
            assert g is not None
        need = {h: max(held[h], blocks_for(kv_tokens(s.context, g), self.block_tokens)) for h in held}
        self._apply(session, s, need, rebuild)
        s.lost.clear()
        s.gamma, s.width, s.busy, s.last_used = g, max(1, min(wide, g)), True, self._tick()
        if gamma is not None or s.width == 1:  # a fixed γ or a chain: every node fed (a tree's up to the cap)
            n_forwards = min(g, forwards_cap or g)
        else:  # F* for the N granted (the limit or the budget may have cut N*)
            n_forwards = tree_forwards(rates, self.costs, g, s.width, forwards_cap)
        return {
            "gamma": g,
            "width": s.width,
            "forwards": n_forwards,
            "rates": rates[: s.width],
            "blocks": self._block_counts(s),
            "evicted": evicted,
            "rebuild": rebuild,
        }

    def commit(
        self, session: str, accepted: int, emitted: int, tried: list[int] | None = None, hits: list[int] | None = None
    ) -> dict:
        """End a step: `accepted` of the γ draft nodes were accepted and `emitted` tokens joined the
        context (a lookup tail's too: it used slots of the blocks granted, so the largest holder's
        blocks must hold all but the last). Blocks past the new length (beyond `spare_blocks`) are
        freed at once, the rejected branches' with them. tried/hits: the walk's counts per rank
        (see `tree.verify_tree`); without them the step counts as a chain's (min(accepted + 1, γ)
        tried at rank 1). Answers {"blocks": {holder: n}, "freed": bytes}."""
        s = self._get(session)
        if s.gamma is None:
            raise SessionBusy(f"session {session!r} has no open grant to commit")
        room = max(map(len, s.blocks.values()), default=0) * self.block_tokens - s.context + 1
        assert 0 <= accepted <= s.gamma and 0 <= emitted <= max(accepted + 1, room), (accepted, emitted, room)
        if s.gamma:
            s.acceptance.record(accepted, s.gamma, tried, hits)
        s.context += emitted
        s.gamma = None
        freed = 0
        for h in self._bytes_per_token:
            held = len(s.blocks[h])
            keep = blocks_after_rollback(held, s.context - 1, self.block_tokens, self.spare_blocks)
            freed += self._set_blocks(session, s, h, keep)
        s.last_used = self._tick()
        return {"blocks": self._block_counts(s), "freed": freed}

    def grant_batch(self, requests: list[dict]) -> list[dict]:
        """`grant` for several sessions in order, one message for a batched step. Each request is
        {"session", "gamma", "limit", "width", "forwards" (each optional)}; each answer is grant's, or
        {"error": as_answer(exc)} (a [class name, message] pair) for that session alone."""
        answers, keys = [], ("gamma", "limit", "width", "forwards")
        for r in requests:
            try:
                answers.append(self.grant(r["session"], **{k: r.get(k) for k in keys}))
            except EngineError as exc:
                answers.append({"error": as_answer(exc)})
        return answers

    def commit_batch(self, requests: list[dict]) -> list[dict]:
        """`commit` for several sessions: requests {"session", "accepted", "emitted", "tried"
        (optional), "hits" (optional)}."""
        return [self.commit(r["session"], r["accepted"], r["emitted"], r.get("tried"), r.get("hits")) for r in requests]

    def finish(self, session: str) -> None:
        """End a turn: the session is idle (evictable) until its next prefill."""
        s = self._get(session)
        s.busy, s.gamma, s.last_used = False, None, self._tick()

    def release(self, session: str) -> int:
        """Forget the session and free all its blocks; answers the bytes freed."""
        s = self._get(session)
        freed = sum(self._set_blocks(session, s, h, 0) for h in list(s.blocks))
        del self._sessions[session]
        return freed

    def set_cost_ratio(self, cost_ratio: float) -> None:
        """A fixed c = t_draft / t_target (a flat target cost in M); used to pick γ*."""
        assert cost_ratio >= 0.0
        self.costs = CostCurve(cost_ratio)

    def observe_costs(
        self,
        draft_s: float | None = None,
        m: int | None = None,
        target_s: float | None = None,
        anchor: bool = False,
    ) -> None:
        """A measured step: `draft_s` seconds per one-token draft forward (a chain's token or a
        tree's node), `target_s` seconds for a target forward of `m` new tokens per session (with
        `anchor`, a calibration timing of the target alone: the curve's shape, `CostCurve`). The
        tree shape is then picked from t_d and the curve t_t(M)."""
        self.costs.observe(draft_s, m, target_s, anchor=anchor)

    def cost_shape(self) -> dict[int, float]:
        """The calibration timings of the target's cost curve, {M: seconds} (empty: none yet)."""
        return dict(self.costs.shape)

    @property
    def cost_ratio(self) -> float:
        return self.costs.ratio

    def alpha(self, session: str) -> float:
        """The running acceptance estimate of the session (prior_alpha counted as 4 draft tokens)."""
        return self.rates(session)[0]

    def rates(self, session: str) -> list[float]:
        """The session's rank acceptance rates a_1..a_{width_max}: a_r = P(the target's token is the
        draft's r-th choice), each with a prior counted as 4 trials (a_1: prior_alpha; a_r, r > 1:
        (1 − prior_alpha) / (r + 1)), none above the rank before it, scaled so that they sum to at
        most 0.99."""
        return self._get(session).acceptance.rates(self.prior_alpha, self.width_max)

    def usage(self) -> dict:
        per_session = {sid: self._session_bytes(s) for sid, s in self._sessions.items()}
        per_holder = {
            h: sum(len(s.blocks.get(h, [])) for s in self._sessions.values()) * self.block_bytes(h)
            for h in self._bytes_per_token
        }
        return {
            "budget": self.budget,
            "live": self._live,
            "peak": self._peak,
            "free": self.budget - self._live,
            "block_tokens": self.block_tokens,
            "sessions": per_session,
            "holders": per_holder,
            "contexts": {sid: s.context for sid, s in self._sessions.items()},
            "evictions": self._evictions,
            "weights": dict(self._weights),
            "memory_budget": self.memory_budget,
            "costs": self.costs.as_dict(),
            "reserved": {owner: sum(keys.values()) for owner, keys in self._reserved.items()},
        }

    def session_blocks(self, session: str) -> dict[str, list[int]]:
        """The block ids each holder owns for `session` (copies)."""
        return {h: list(ids) for h, ids in self._get(session).blocks.items()}

    def block_owners(self) -> dict[int, tuple[str, str]]:
        """Every owned block id -> (holder, session)."""
        return dict(self._ids.owner)

    # internals

    def _get(self, session: str) -> _Session:
        try:
            return self._sessions[session]
        except KeyError:
            raise UnknownSession(f"unknown session {session!r}") from None

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _wanted_shape(self, s: _Session, width: int, rates: list[float], forwards_cap: int | None) -> tuple[int, int]:
        if width == 1:  # a chain, priced by depth (bursty acceptance: acceptance.py)
            depths = s.acceptance.depth_rates(self.prior_alpha, self.gamma_max)
            return chain_length(depths, self.costs, self.fraction, self.gamma_max), 1
        return tree_shape(rates, self.costs, self.fraction, self.gamma_max, width, forwards_cap)[:2]

    def _session_holder_bytes(self, s: _Session, holder: str) -> int:
        return len(s.blocks.get(holder, [])) * self.block_bytes(holder)

    def _session_bytes(self, s: _Session) -> int:
        return sum(self._session_holder_bytes(s, h) for h in s.blocks)

    def _block_counts(self, s: _Session) -> dict[str, int]:
        return {h: len(ids) for h, ids in s.blocks.items()}

    def _extra_bytes(self, s: _Session, need: dict[str, int]) -> int:
        # a rebuilt cache frees what it holds and takes `need` afresh: the same difference
        return sum((n - len(s.blocks.get(h, []))) * self.block_bytes(h) for h, n in need.items())

    def _apply(self, sid: str, s: _Session, need: dict[str, int], rebuild: list[str]) -> None:
        for h in rebuild:
            self._set_blocks(sid, s, h, 0)
        for h in sorted(need, key=lambda h: need[h] - len(s.blocks.get(h, []))):
            self._set_blocks(sid, s, h, need[h])

    def _make_room(self, session: str, extra: int) -> list[str]:
        """Evict idle sessions, least recently used first, until `extra` bytes fit; raise
        OverBudget (evicting nothing) if even evicting all of them would not do."""
        free = self.budget - self._live
        if extra <= free:
            return []
        idle = sorted(
            (s.last_used, sid)
            for sid, s in self._sessions.items()
            if not s.busy and sid != session and self._session_bytes(s) > 0
        )
        if free + sum(self._session_bytes(self._sessions[sid]) for _, sid in idle) < extra:
            raise OverBudget(
                f"session {session!r} needs {extra} B more; {free} B free and {len(idle)} idle sessions cannot cover it"
            )
        evicted = []
        for _, sid in idle:
            if extra <= self.budget - self._live:
                break
            s = self._sessions[sid]
            for h in list(s.blocks):
                self._set_blocks(sid, s, h, 0)
                s.lost.add(h)
            self._evictions += 1
            evicted.append(sid)
        return evicted

    def _set_blocks(self, sid: str, s: _Session, holder: str, n: int) -> int:
        """Make `holder` own exactly n blocks for the session; answers the bytes freed (negative: taken)."""
        ids = s.blocks.setdefault(holder, [])
        delta = (n - len(ids)) * self.block_bytes(holder)
        assert self._live + delta <= self.budget, "the manager never exceeds its budget"
        while len(ids) > n:
            self._ids.give(ids.pop())
        while len(ids) < n:
            ids.append(self._ids.take(holder, sid))
        self._live += delta
        self._peak = max(self._peak, self._live)
        return -delta
