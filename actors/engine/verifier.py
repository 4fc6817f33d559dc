"""The verifier side: the target model, the chat sessions and the target caches.

`VerifierCore` owns each session's committed token ids, its chat messages (rendered with the
tokenizer's chat template, KV kept between turns) and its target block cache; `verify` checks
every active session's draft tokens in one target forward. The step driver that calls it,
`Driver` (with the holder names DRAFT and TARGET), is defined in `driver` and re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .batch import forward_rows
from .driver import DRAFT, TARGET, Driver
from .errors import BadPrompt, ContextTooLong, SessionBusy, UnknownSession
from .kvcache import BlockKVCache, CacheHolder, TreeFeed
from .speculative import Timer
from .tree import Tree, verify_tree

__all__ = ["DRAFT", "TARGET", "Driver", "VerifierCore", "check_messages"]  # the driver, re-exported

_SENTINEL = "\u2063specmemo-reply\u2063"


@dataclass
class _TargetSession:
    ids: np.ndarray
    cache: BlockKVCache | None
    messages: list[dict] = field(default_factory=list)
    prefilled: int = 0  # tokens the last prefill computed (the rest of the prompt was reused)


ROLES = ("system", "user", "assistant")


def check_messages(messages) -> list[dict]:
    """A conversation as plain {"role", "content"} dicts; BadPrompt unless every role is one of
    ROLES, every content a string, and the last message the user's."""
    if not isinstance(messages, list) or not messages:
        raise BadPrompt("messages must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise BadPrompt(f"message {i} must have a role in {ROLES} and a string content")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "user" or not out[-1]["content"].strip():
        raise BadPrompt("the last message must be a non-empty user message")
    return out


class VerifierCore(CacheHolder):
    """Target model, per-session target caches and chat state."""

    def __init__(
        self,
        model,
        tokenizer=None,
        block_tokens: int = 16,
        spare_blocks: int = 1,
        max_context: int | None = None,
        prefix_tokens: int = 0,
    ):
        super().__init__(model, block_tokens, spare_blocks, max_context, prefix_tokens=prefix_tokens)
        self.tokenizer = tokenizer
        self._sessions: dict[str, _TargetSession] = {}

    # sessions and prompts

    def open(self, session: str) -> None:
        if session in self._sessions:
            raise SessionBusy(f"session {session!r} is already open")
        self._sessions[session] = _TargetSession(ids=np.zeros(0, dtype=np.int64), cache=None)

    def has(self, session: str) -> bool:
        return session in self._sessions

    def sessions(self) -> list[str]:
        """The open sessions (with or without a cache)."""
        return list(self._sessions)

    def close(self, session: str) -> int:
        """Forget the session; answers the cache bytes freed."""
        s = self._get(session)
        del self._sessions[session]
        return s.cache.held_bytes() if s.cache is not None else 0

    def ids(self, session: str) -> np.ndarray:
        return self._get(session).ids.copy()

    def prefilled(self, session: str) -> int:
        """Tokens the session's last prefill computed (its prompt's others were resident)."""
        return self._get(session).prefilled

    def chat_prompt(self, session: str, message: str) -> tuple[np.ndarray, int]:
        """The whole conversation with the user's `message` appended, as token ids, and how many of
        its first ids equal the committed ids (their KV is reused); see `conversation_prompt`."""
        if not message or not message.strip():
            raise BadPrompt("empty message")
        return self.conversation_prompt(session, self._get(session).messages + [{"role": "user", "content": message}])

    def conversation_prompt(self, session: str, messages: list[dict]) -> tuple[np.ndarray, int]:
        """A whole conversation (`messages`: {"role": system|user|assistant, "content": str}, ending
        with a user message) as token ids, and how many of its first ids equal the committed ids.

        When the session's own conversation (earlier prompts and the replies exactly as generated)
        is a prefix of `messages`, the committed ids are kept verbatim and only what the chat
        template renders after the last reply is tokenized, found by rendering a sentinel in the
        reply's place. Otherwise (another history, a reply that does not round-trip through text,
        a template that alters the sentinel) everything is rendered and the longest common prefix
        of ids is reused.
        """
        s = self._get(session)
        messages = check_messages(messages)
        if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
            raise BadPrompt("this verifier has no tokenizer with a chat template")
        full = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        known = len(s.messages)
        if known and s.messages[-1]["role"] == "assistant" and messages[:known] == s.messages:
            marked = s.messages[:-1] + [{"role": "assistant", "content": _SENTINEL}] + messages[known:]
            text = self.tokenizer.apply_chat_template(marked, add_generation_prompt=True, tokenize=False)
            if text.count(_SENTINEL) == 1:
                tail = self.tokenizer.encode(text.split(_SENTINEL)[1], add_special_tokens=False)
                eos = self.tokenizer.eos_token_id
                if len(s.ids) and s.ids[-1] == eos and tail[:1] == [eos]:
                    tail = tail[1:]
                full = np.concatenate([s.ids, np.asarray(tail, dtype=np.int64)])
        return self.check_prompt(session, np.asarray(full, dtype=np.int64))

    def check_prompt(self, session: str, token_ids) -> tuple[np.ndarray, int]:
        """Validate a whole-context prompt; answers (ids, keep) with keep the common prefix length
        with the committed ids, at most len(ids) − 1."""
        s = self._get(session)
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        if len(ids) == 0:
            raise BadPrompt("empty prompt")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise BadPrompt(f"token ids outside the vocabulary [0, {self.vocab_size})")
        if len(ids) >= self.max_context:
            raise ContextTooLong(f"prompt of {len(ids)} tokens; the model's context is {self.max_context}")
        n = min(len(ids) - 1, len(s.ids))
        differs = np.nonzero(ids[:n] != s.ids[:n])[0]
        keep = int(differs[0]) if len(differs) else n
        return ids, keep

    def end_turn(self, session: str, message: str, reply_ids: np.ndarray) -> str:
        """Record the user message and the reply in the conversation; answers the reply text."""
        return self.end_conversation(
            session, self._get(session).messages + [{"role": "user", "content": message}], reply_ids
        )

    def end_conversation(self, session: str, messages: list[dict], reply_ids: np.ndarray) -> str:
        """The conversation is now `messages` and the reply; answers the reply text."""
        s = self._get(session)
        text = self.tokenizer.decode(np.asarray(reply_ids).tolist(), skip_special_tokens=True)
        s.messages = [dict(m) for m in messages] + [{"role": "assistant", "content": text}]
        return text

    # caches

    def prefill(self, session: str, token_ids: np.ndarray, keep: int, blocks: int) -> int:
        """Make the context `token_ids` (first `keep` unchanged) resident but for its last token,
        in `blocks` blocks; a dropped cache is rebuilt from token 0. Answers held bytes."""
        s = self._get(session)
        ids = np.asarray(token_ids, dtype=np.int64)
        if s.cache is None:
            s.cache = self.new_cache()
            keep = 0
        resident = min(s.cache.length, keep)
        s.cache.rollback(s.cache.length - resident, s.cache.blocks)
        s.cache.resize(blocks)
        s.ids = ids
        s.prefilled = self.fill(s.cache, ids, resident)
        return s.cache.held_bytes()

    def drop(self, session: str) -> int:
        """Drop the session's cache (evicted), keeping its ids and messages; answers bytes freed."""
        s = self._get(session)
        freed = s.cache.held_bytes() if s.cache is not None else 0
        s.cache = None
        return freed

    def verify(
        self,
        sessions: list[str],
        drafts: np.ndarray,
        gammas: list[int],
        blocks: list[int],
        temperature: float | list[float] = 0.0,
        draft_probs: np.ndarray | None = None,
        seeds: list[int] | None = None,
        parents: np.ndarray | None = None,
        counted: list[int] | None = None,
    ) -> dict:
        """One target forward over every session's pending token and its tree of gammas[b] draft
        nodes (tokens drafts[b], parents parents[b]; a chain when `parents` is None), each node
        attending to its ancestors only and placed at the position of its depth.

        drafts, parents: int64 [B, Nmax]; draft_probs: float32 [B, Nmax, V] when any row samples;
        temperature: one for all rows or one per row (0: greedy). counted[b]: the draft's nodes
        of row b (those past them, a lookup tail, do not count in tried/hits; default: all).
        Answers {"accepted": [n_b], "tokens": [int64 arrays of n_b + 1 tokens], "paths": [accepted
        node indices], "tried", "hits": [per-rank counts], "seconds": float}.
        """
        rows = [self._get(s) for s in sessions]
        assert drafts.shape[0] == len(rows) == len(gammas) == len(blocks)
        temps = list(temperature) if isinstance(temperature, (list, tuple)) else [temperature] * len(rows)
        trees = [
            Tree.chain(drafts[b, :g]) if parents is None else Tree.from_rows(drafts[b], parents[b], g)
            for b, g in enumerate(gammas)
        ]
        feeds: list[np.ndarray] = []
        masks: list[TreeFeed | None] = []
        caches: list[BlockKVCache] = []
        for row, tree, n_blocks in zip(rows, trees, blocks):
            assert row.cache is not None and row.cache.length == len(row.ids) - 1
            caches.append(row.cache)
            row.cache.resize(n_blocks)
            feeds.append(np.concatenate([row.ids[-1:], tree.tokens]))
            if tree.is_chain:
                masks.append(None)
            else:
                visible, offsets = tree.target_feed()
                masks.append(TreeFeed(row.cache.length, visible, row.cache.length + offsets))
        with Timer() as timer:
            logits = forward_rows(self.model, caches, feeds, [len(t) + 1 for t in trees], masks)
            verdicts = []
            for b, tree in enumerate(trees):
                rng = np.random.default_rng(seeds[b] if seeds else 0)
                q = draft_probs[b, : len(tree)] if draft_probs is not None else None
                n = counted[b] if counted is not None else None
                verdicts.append(verify_tree(tree, logits[b].cpu().numpy(), temps[b], q, rng, counted=n))
        return {
            "accepted": [v.accepted for v in verdicts],
            "tokens": [v.tokens for v in verdicts],
            "paths": [v.path for v in verdicts],
            "tried": [v.tried for v in verdicts],
            "hits": [v.hits for v in verdicts],
            "seconds": timer.seconds,
        }

    def settle(self, session: str, tokens: np.ndarray, blocks: int, path: list[int] | None = None) -> int:
        """`tokens` joined the context: keep what the target cache holds of them (the pending
        token and the accepted nodes on `path`, default the chain's first ones, compacted in
        place; all but the last token), drop every other branch, keep `blocks` blocks.
        Answers held bytes."""
        s = self._get(session)
        tokens = np.asarray(tokens, dtype=np.int64)
        assert len(tokens) >= 1
        start = len(s.ids)  # the pending token sat at start − 1
        path = list(range(len(tokens) - 1)) if path is None else list(path)
        s.ids = np.concatenate([s.ids, tokens])
        assert s.cache is not None, "a session in a turn has its cache"
        s.cache.keep_path(start, [start + node for node in path[: len(tokens) - 1]], s.cache.blocks)
        s.cache.resize(blocks)
        return s.cache.held_bytes()

    def held_bytes(self, session: str | None = None) -> int:
        if session is not None:
            s = self._get(session)
            return s.cache.held_bytes() if s.cache is not None else 0
        return sum(s.cache.held_bytes() for s in self._sessions.values() if s.cache is not None)

    def _get(self, session: str) -> _TargetSession:
        try:
            return self._sessions[session]
        except KeyError:
            raise UnknownSession(f"unknown session {session!r}") from None
