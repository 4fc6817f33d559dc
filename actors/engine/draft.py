"""The draft side: a draft model and one block KV cache per session.

Plain data in and out (str, int, float, numpy arrays), so an actor can wrap it unchanged.
A session's cache holds a prefix of its committed token ids; the rest (at least the last
token) is "pending" and is fed at the start of the next proposal. Block counts come from the
memory manager: every call that may write takes the number of blocks the cache must hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .batch import forward_rows
from .errors import UnknownSession
from .kvcache import BlockKVCache, CacheHolder, TreeFeed
from .speculative import Timer, sample
from .vocabulary import DraftVocabulary, SessionVocabulary


@dataclass
class _DraftSession:
    ids: np.ndarray
    cache: BlockKVCache
    proposed: int = 0
    slots: list[int] = field(default_factory=list)  # cache slot of each proposed node (−1: not fed)
    head: SessionVocabulary | None = None  # the head rows its forwards compute (None: all)


@dataclass
class _Node:
    token: int
    parent: int  # −1: the root
    logp: float  # log path probability under the draft
    slot: int = -1  # its cache slot once fed
    q: np.ndarray | None = None  # the distribution it was sampled from


def _log(x: float) -> float:
    return float(np.log(max(x, 1e-30)))


def _rank_rates(rates: list[float] | None, width: int) -> list[float] | None:
    # one rate a rank up to the width, each in [0, 1] (NaN: 0) and none above the rank before it
    # (the rank model's order), padded with 0; None without rates
    if not rates:
        return None
    out: list[float] = []
    for a in list(rates[:width]) + [0.0] * (width - len(rates)):
        a = min(max(float(a), 0.0), 1.0) if a == a else 0.0
        out.append(min(a, out[-1]) if out else a)
    return out


@dataclass
class _Draw:
    """A sampled child not drawn yet. Its token is drawn when it is selected, from q less the
    tokens its earlier siblings took, so whether a child is tried never depends on the token it
    turns out to be: the q the multi-draft rule divides by is the law of the token it tries.

    Its key, and its path value once drawn: with the session's rank acceptance rates, the
    parent's value times a_r for the r-th draw (a drawn token's q says how likely the draft was to
    draw it, not how likely the target is to accept it: a first draw is accepted with probability
    1 − TV(p, q)); without them, the expected q of the draw, E[q(x)] = Σ q², and once drawn the
    token's own q."""

    parent: int
    base: float  # the parent's log path value
    logp: float  # the selection key
    rest: np.ndarray  # q over the tokens no earlier sibling took (not renormalized)
    left: int  # siblings still allowed, this one included
    rates: list[float] | None = None  # a_r of this draw's rank and the later ones

    @classmethod
    def first(cls, parent: int, base: float, q: np.ndarray, width: int, rates: list[float] | None = None) -> _Draw:
        key = _log(rates[0]) if rates else _log(float(np.dot(q, q)))
        return cls(parent, base, base + key, q, width, rates)

    def draw(self, rng: np.random.Generator) -> tuple[_Node, _Draw | None]:
        """The child, and the draw of its next sibling (None past the width or the vocabulary)."""
        total = float(self.rest.sum())
        q = self.rest / total
        token = sample(q, rng)
        value = self.logp if self.rates else self.base + _log(float(self.rest[token]))
        node = _Node(token, self.parent, value, q=q)
        if self.left <= 1 or total - float(self.rest[token]) <= 0.0:
            return node, None
        rest = self.rest.copy()
        rest[token] = 0.0
        rates = self.rates[1:] if self.rates else None
        if rates:
            key = _log(rates[0])
        else:
            key = _log(float(np.dot(rest, rest)) / float(rest.sum()))  # E[q(x)] of the next draw
        return node, _Draw(self.parent, self.base, self.base + key, rest, self.left - 1, rates)


@dataclass
class _Growth:
    """One row's tree while it grows: its nodes, the candidates, and the node selected last round
    (the one the next forward feeds; -1, the root, before the first, None once none is left)."""

    base: int  # the first tree slot (the pending tokens end just below it)
    nodes: list[_Node] = field(default_factory=list)
    candidates: list[_Node | _Draw] = field(default_factory=list)
    fed: int | None = -1

    def select(self, rng: np.random.Generator) -> None:
        # the candidate of highest path probability becomes the next node (the first on ties); a
        # selected draw is drawn then, and its next sibling joins the candidates
        self.fed = None
        if self.candidates:
            best = max(range(len(self.candidates)), key=lambda i: self.candidates[i].logp)
            chosen = self.candidates.pop(best)
            if isinstance(chosen, _Draw):
                chosen, sibling = chosen.draw(rng)
                if sibling is not None:
                    self.candidates.append(sibling)
            self.fed = len(self.nodes)
            self.nodes.append(chosen)

    def feed(self, length: int) -> np.ndarray:
        # the node selected last is fed next, at slot `length`
        assert self.fed is not None and self.fed >= 0
        node = self.nodes[self.fed]
        node.slot = length
        return np.array([node.token], dtype=np.int64)

    def tree_feed(self, length: int) -> TreeFeed:
        # the fed node sees its ancestors and itself; position = base − 1 + depth
        assert self.fed is not None and self.fed >= 0
        visible = np.zeros((1, length + 1 - self.base), dtype=bool)
        node, depth = self.fed, 0
        while node >= 0:
            visible[0, self.nodes[node].slot - self.base] = True
            node, depth = self.nodes[node].parent, depth + 1
        return TreeFeed(self.base, visible, np.array([self.base - 1 + depth], dtype=np.int64))


class DraftCore(CacheHolder):
    """Proposes γ tokens per session per step, in one batched forward per draft position.

    `vocab_rows`: a session's forwards compute the head rows of the first `vocab_rows` token ids
    and of its own context's tokens (`vocabulary`; None: `vocabulary.auto_rows`, 0: every row).
    `prefix_tokens`: the size of its store of prompt prefixes' KV (`prefix.PrefixStore`)."""

    def __init__(
        self,
        model,
        block_tokens: int = 16,
        spare_blocks: int = 1,
        vocab_rows: int | None = None,
        prefix_tokens: int = 0,
    ):
        super().__init__(model, block_tokens, spare_blocks, exact=False, prefix_tokens=prefix_tokens)
        self._sessions: dict[str, _DraftSession] = {}
        self.vocabulary = DraftVocabulary.for_model(model, vocab_rows)

    @property
    def vocab_rows(self) -> int:
        """The base rows of a session's head (0: the whole head)."""
        return self.vocabulary.rows if self.vocabulary is not None else 0

    def session_head(self, ids: np.ndarray) -> SessionVocabulary | None:
        if self.vocabulary is None:
            return None
        head = self.vocabulary.session()
        head.add(ids)
        return head

    def open(self, session: str, token_ids: np.ndarray, blocks: int) -> int:
        """Create (or rebuild from scratch) the session's cache from its committed ids; answers held bytes."""
        self._sessions.pop(session, None)
        cache = self.new_cache()
        self._sessions[session] = _DraftSession(np.zeros(0, dtype=np.int64), cache, head=self.session_head(np.zeros(0)))
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
        if s.head is not None:
            s.head.add(ids[keep:])
        self.fill(s.cache, ids, resident, s.head)
        assert s.cache.blocks == blocks
        return s.cache.held_bytes()

    def propose(
        self,
        sessions: list[str],
        gammas: list[int],
        blocks: list[int],
        temperature: float | list[float] = 0.0,
        seeds: list[int] | None = None,
        widths: list[int] | None = None,
        rates: list[list[float]] | None = None,
        forwards: list[int] | None = None,
    ) -> dict:
        """Draft a tree of gammas[b] nodes for sessions[b] whose nodes have up to widths[b] children
        (1, the default: a chain of γ tokens), in at most forwards[b] draft forwards (default γ).
        `temperature` is one for all rows or one per row. `rates[b]`: the session's rank acceptance
        rates a_1..a_w, a sampled tree's growth keys (see `_Draw`; empty or None: q's own).

        A tree grows best-first, one node per forward: the forward that feeds the root (the
        pending tokens) gives the root's w most likely children as candidates; each round then
        takes the candidate of highest path probability as the next node and, unless the tree is
        full, feeds it in a forward whose tree mask lets it see only its ancestors, adding its w
        most likely children to the candidates. So the tree is the N nodes of highest path
        probability (values only shrink down a path): it branches where the draft is unsure and
        runs deep where it is sure, at the chain's cost of N one-token forwards (EAGLE-2's
        selection). With F = forwards[b] < N, the forwards stop after the F-th node is taken and
        the tree's last N − F nodes are the best candidates left, leaves no forward feeds
        (EAGLE-2's re-ranking): a leaf costs the draft nothing, only its row of the target's
        forward. A chain has one candidate a forward, so it stops at F tokens. At temperature > 0
        a node's children are instead up to w draws from q without replacement, each drawn only
        once selected and answered with the q it was drawn from (see `tree.verify_tree`); a draw's
        key is its parent's value times a_r given `rates` (so a sampled tree is the rank model's
        best tree, Sequoia's), else the expected q of the draw (`_Draw`); a chain samples each
        token from q.

        Answers {"tokens": int64 [B, Nmax] (-1 past a row's N), "parents": int64 [B, Nmax] (−1:
        the root), "probs": float32 [B, Nmax, V] of the sampled nodes' q (zeros for the others; None
        when nothing was sampled), "seconds": float, "token_seconds": the mean of the forwards
        that fed every row one token (None without one: a catch-up of several pending tokens is not
        a draft token's cost) and "forwards": [the forwards each row took]}.
        """
        assert len(sessions) == len(gammas) == len(blocks)
        rows = [self._get(s) for s in sessions]
        widths = list(widths) if widths is not None else [1] * len(rows)
        width = max(gammas, default=0)
        tokens = np.full((len(rows), width), -1, dtype=np.int64)
        parents = np.full((len(rows), width), -1, dtype=np.int64)
        temps = list(temperature) if isinstance(temperature, (list, tuple)) else [temperature] * len(rows)
        assert len(temps) == len(rows) == len(widths)
        sampled = any(t > 0 for t in temps)
        probs = np.zeros((len(rows), width, self.vocab_size), dtype=np.float32) if sampled else None
        rngs = [np.random.default_rng(seed) for seed in (seeds or [0] * len(rows))]
        assert rates is None or len(rates) == len(rows)
        assert forwards is None or len(forwards) == len(rows)
        row_rates = [_rank_rates(r, w) for r, w in zip(rates, widths)] if rates is not None else [None] * len(rows)
        grown = [_Growth(len(row.ids)) for row in rows]
        forwards_max = [max(1, f) for f in forwards] if forwards is not None else list(gammas)
        taken = [0] * len(rows)  # forwards each row took
        one_token: list[float] = []  # forwards that fed every row one token: a draft token's cost
        with Timer() as timer:
            for row, n_blocks, gamma in zip(rows, blocks, gammas):
                row.cache.resize(n_blocks)
                row.proposed = gamma
                assert gamma == 0 or len(row.ids) + gamma - 1 <= n_blocks * self.block_tokens, (gamma, n_blocks)
            active = [b for b, g in enumerate(gammas) if g > 0]
            feeds = [rows[b].ids[rows[b].cache.length :] for b in active]
            trees: list = [None] * len(active)
            while active:
                with Timer() as step:
                    logits = forward_rows(
                        self.model,
                        [rows[b].cache for b in active],
                        feeds,
                        [1] * len(active),  # the logits of each row's last fed token
                        trees,
                        exact=False,
                        heads=[rows[b].head for b in active],
                    )
                if all(len(f) == 1 for f in feeds):
                    one_token.append(step.seconds)
                for i, b in enumerate(active):
                    g = grown[b]
                    assert g.fed is not None
                    self._expand(g, g.fed, logits[i][0], temps[b], widths[b], row_rates[b])
                    g.select(rngs[b])
                    taken[b] += 1
                # a row is done at its N nodes, its F forwards, or when no candidate is left (its
                # vocabulary ran out)
                active = [
                    b
                    for b in active
                    if len(grown[b].nodes) < gammas[b] and grown[b].fed is not None and taken[b] < forwards_max[b]
                ]
                feeds = [grown[b].feed(rows[b].cache.length) for b in active]
                trees = [grown[b].tree_feed(rows[b].cache.length) if widths[b] > 1 else None for b in active]
            for b, g in enumerate(grown):
                while len(g.nodes) < gammas[b] and g.candidates:  # the leaves: no forward feeds them
                    g.select(rngs[b])
                n = len(g.nodes)
                tokens[b, :n] = [node.token for node in g.nodes]
                parents[b, :n] = [node.parent for node in g.nodes]
                rows[b].slots = [node.slot for node in g.nodes]
                for i, node in enumerate(g.nodes):
                    if node.q is not None:
                        assert probs is not None  # a node keeps its q only when sampled
                        probs[b, i] = node.q
        return {
            "tokens": tokens,
            "parents": parents,
            "probs": probs,
            "seconds": timer.seconds,
            "token_seconds": sum(one_token) / len(one_token) if one_token else None,
            "forwards": taken,
        }

    def _expand(
        self,
        g: _Growth,
        node: int,
        logits: torch.Tensor,
        temperature: float,
        width: int,
        rates: list[float] | None = None,
    ) -> None:
        # add `node`'s children as candidates: up to `width` draws from q when sampling, else its
        # `width` most likely (greedy)
        base = 0.0 if node < 0 else g.nodes[node].logp
        if temperature > 0:
            q = torch.softmax(logits.float() / temperature, dim=-1).cpu().numpy()
            g.candidates.append(_Draw.first(node, base, q, width, rates))
            return
        if width == 1:  # a greedy chain: the argmax, whose path probability no one reads
            g.candidates.append(_Node(int(torch.argmax(logits)), node, base))
            return
        top = torch.topk(torch.log_softmax(logits.float(), dim=-1), width)
        for logp, token in zip(top.values.tolist(), top.indices.tolist()):
            g.candidates.append(_Node(int(token), node, base + logp))

    def accept(
        self, session: str, accepted: int, tokens: np.ndarray, blocks: int, path: list[int] | None = None
    ) -> int:
        """The step's outcome: the nodes on `path` (default: the chain's first `accepted`) were
        accepted and `tokens` (their tokens, then the target's token, possibly cut short) joined the
        context. Keeps the KV of the accepted nodes that were fed (compacted in place), drops every
        other branch and keeps `blocks` blocks; answers held bytes. Nodes past the proposal's (a
        lookup tail's) were not fed: they are pending, as leaves are."""
        s = self._get(session)
        tokens = np.asarray(tokens, dtype=np.int64)
        path = list(range(accepted)) if path is None else list(path)
        assert 1 <= len(tokens) <= accepted + 1 and len(path) == accepted
        if s.proposed:
            kept = []
            for node in path[: len(tokens) - 1]:
                if node >= len(s.slots) or s.slots[node] < 0:
                    break
                kept.append(s.slots[node])
            s.cache.keep_path(len(s.ids), kept, s.cache.blocks)
        s.cache.resize(blocks)
        s.ids = np.concatenate([s.ids, tokens])
        s.proposed, s.slots = 0, []
        if s.head is not None:
            s.head.add(tokens)
        return s.cache.held_bytes()

    def accept_batch(
        self,
        sessions: list[str],
        accepted: list[int],
        tokens: list[np.ndarray],
        blocks: list[int],
        paths: list[list[int] | None] | None = None,
    ) -> list[int]:
        """`accept` for every session of a step at once (one message when the draft is an actor);
        UnknownSession, with nothing changed, unless every session is open. Answers held bytes."""
        assert len(sessions) == len(accepted) == len(tokens) == len(blocks)
        for session in sessions:
            self._get(session)
        paths = paths if paths is not None else [None] * len(sessions)
        return [self.accept(s, n, t, b, p) for s, n, t, b, p in zip(sessions, accepted, tokens, blocks, paths)]

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
