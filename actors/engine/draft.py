"""The draft side: a draft model and one block KV cache per session.

Plain data in and out (str, int, float, numpy arrays), so an actor can wrap it unchanged.
A session's cache holds a prefix of its committed token ids; the rest (at least the last
token) is "pending" and is fed at the start of the next proposal. Block counts come from the
memory manager: every call that may write takes the number of blocks the cache must hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .batch import forward_rows
from .errors import UnknownSession
from .kvcache import BlockKVCache, CacheHolder
from .speculative import Timer, sample


@dataclass
class _DraftSession:
    ids: np.ndarray
    cache: BlockKVCache
    proposed: int = 0


class DraftCore(CacheHolder):
    """Proposes γ tokens per session per step, in one batched forward per draft position."""

    def __init__(self, model, block_tokens: int = 16, spare_blocks: int = 1):
        super().__init__(model, block_tokens, spare_blocks)
        self._sessions: dict[str, _DraftSession] = {}

    def open(self, session: str, token_ids: np.ndarray, blocks: int) -> int:
        """Create (or rebuild from scratch) the session's cache from its committed ids; answers held bytes."""
        self._sessions.pop(session, None)
        cache = self.new_cache()
        self._sessions[session] = _DraftSession(ids=np.zeros(0, dtype=np.int64), cache=cache)
        return self.extend(session, token_ids, 0, blocks)

    rebuild = open

    def extend(self, session: str, token_ids: np.ndarray, keep: int, blocks: int) -> int:
        """A new turn: the committed ids become `token_ids`, of which the first `keep` are unchanged.
        Everything but the last token is made resident in `blocks` blocks; answers held bytes."""
        s = self._get(session)
        ids = np.asarray(token_ids, dtype=np.int64)
        assert len(ids) >= 1 and 0 <= keep <= min(len(ids), len(s.ids))
        resident = min(s.cache.length, keep)
        s.cache.rollback(s.cache.length - resident, s.cache.blocks)
        s.cache.resize(blocks)
        s.ids, s.proposed = ids, 0
        if len(ids) - 1 > resident:
            forward_rows(self.model, [s.cache], [ids[resident:-1]], [0])
        assert s.cache.blocks == blocks
        return s.cache.held_bytes()

    def propose(
        self,
        sessions: list[str],
        gammas: list[int],
        blocks: list[int],
        temperature: float | list[float] = 0.0,
        seeds: list[int] | None = None,
    ) -> dict:
        """Draft gammas[b] tokens for sessions[b] (greedy at temperature 0, else sampled from q;
        `temperature` is one for all rows or one per row).

        Answers {"tokens": int64 [B, γmax] (-1 past a row's γ), "probs": float32 [B, γmax, V] of
        the distributions the tokens were drawn from (None when greedy), "seconds": float,
        "token_seconds": the mean time of the forwards that fed one token a row (a catch-up of
        several pending tokens costs more with some kernels, and is not a draft token's cost)}.
        """
        assert len(sessions) == len(gammas) == len(blocks)
        rows = [self._get(s) for s in sessions]
        width = max(gammas, default=0)
        tokens = np.full((len(rows), width), -1, dtype=np.int64)
        temps = list(temperature) if isinstance(temperature, (list, tuple)) else [temperature] * len(rows)
        assert len(temps) == len(rows)
        probs = np.zeros((len(rows), width, self.vocab_size), dtype=np.float32) if max(temps, default=0) > 0 else None
        rngs = [np.random.default_rng(seed) for seed in (seeds or [0] * len(rows))]
        single: list[float] = []       # forwards that fed exactly one token to every row
        with Timer() as timer:
            for row, n_blocks, gamma in zip(rows, blocks, gammas):
                row.cache.resize(n_blocks)
                row.proposed = gamma
                assert gamma == 0 or len(row.ids) + gamma - 1 <= n_blocks * self.block_tokens, (gamma, n_blocks)
            for j in range(width):
                active = [b for b, g in enumerate(gammas) if g > j]
                feeds = [rows[b].ids[rows[b].cache.length :] if j == 0 else tokens[b, j - 1 : j] for b in active]
                caches = [rows[b].cache for b in active]
                with Timer() as step:
                    logits = [x[0] for x in forward_rows(self.model, caches, feeds, [1] * len(active))]
                if all(len(f) == 1 for f in feeds):
                    single.append(step.seconds)
                for i, b in enumerate(active):
                    if temps[b] > 0:
                        p = torch.softmax(logits[i] / temps[b], dim=-1).cpu().numpy()
                        probs[b, j] = p
                        tokens[b, j] = sample(p, rngs[b])
                    else:
                        tokens[b, j] = int(logits[i].argmax())
        return {"tokens": tokens, "probs": probs, "seconds": timer.seconds,
                "token_seconds": sum(single) / len(single) if single else None}

    def accept(self, session: str, accepted: int, tokens: np.ndarray, blocks: int) -> int:
        """The step's outcome: `accepted` of the proposed drafts were accepted and `tokens` (the
        accepted drafts, then the target's token, possibly cut short) joined the context. Drops
        the rejected drafts from the cache and keeps `blocks` blocks; answers held bytes."""
        s = self._get(session)
        tokens = np.asarray(tokens, dtype=np.int64)
        assert 1 <= len(tokens) <= accepted + 1 and accepted <= s.proposed
        base = len(s.ids)
        if s.proposed:
            keep = base + min(accepted, len(tokens) - 1, s.proposed - 1)
            s.cache.rollback(s.cache.length - keep, s.cache.blocks)
        s.cache.resize(blocks)
        s.ids = np.concatenate([s.ids, tokens])
        s.proposed = 0
        return s.cache.held_bytes()

    def close(self, session: str) -> int:
        """Drop the session and its cache; answers the bytes freed (0 if it was not open)."""
        s = self._sessions.pop(session, None)
        return s.cache.held_bytes() if s else 0

    def has(self, session: str) -> bool:
        return session in self._sessions

    def sessions(self) -> list[str]:
        """The sessions that have a draft cache."""
        return list(self._sessions)

    def held_bytes(self, session: str | None = None) -> int:
        """Storage bytes of one session's cache, or of all of them."""
        if session is not None:
            return self._get(session).cache.held_bytes()
        return sum(s.cache.held_bytes() for s in self._sessions.values())

    def _get(self, session: str) -> _DraftSession:
        try:
            return self._sessions[session]
        except KeyError:
            raise UnknownSession(f"draft has no session {session!r}") from None
