"""The verifier side (target model, chat sessions, target caches) and the step driver.

`VerifierCore` owns each session's committed token ids, its chat messages (rendered with the
tokenizer's chat template, KV kept between turns) and its target block cache. `Driver` runs
speculative steps over the active sessions: grant (memory) -> propose (draft) -> verify in one
target forward -> accept -> commit (memory) -> settle both caches. It talks to the draft side
and to the memory side only through their methods, with plain data, so either may be a remote
proxy with the same method names (as the verifier actor's proxies of the draft and memory actors are).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .batch import forward_rows
from .errors import BadPrompt, ContextTooLong, SessionBusy, UnknownSession
from .kvcache import BlockKVCache, CacheHolder, TreeFeed
from .speculative import SpecStats, StepStats, Timer
from .tree import Tree, verify_tree

DRAFT, TARGET = "draft", "target"
_SENTINEL = "\u2063specmemo-reply\u2063"


@dataclass
class _TargetSession:
    ids: np.ndarray
    cache: BlockKVCache | None
    messages: list[dict] = field(default_factory=list)
    prefilled: int = 0           # tokens the last prefill computed (the rest of the prompt was reused)


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
        self, model, tokenizer=None, block_tokens: int = 16, spare_blocks: int = 1, max_context: int | None = None
    ):
        super().__init__(model, block_tokens, spare_blocks, max_context)
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
        return self.end_conversation(session, self._get(session).messages + [{"role": "user", "content": message}],
                                     reply_ids)

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
        s.prefilled = max(0, len(ids) - 1 - resident)
        if len(ids) - 1 > resident:
            forward_rows(self.model, [s.cache], [ids[resident:-1]], [0])
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
    ) -> dict:
        """One target forward over every session's pending token and its tree of gammas[b] draft
        nodes (tokens drafts[b], parents parents[b]; a chain when `parents` is None), each node
        attending to its ancestors only and placed at the position of its depth.

        drafts, parents: int64 [B, Nmax]; draft_probs: float32 [B, Nmax, V] when any row samples;
        temperature: one for all rows or one per row (0: greedy).
        Answers {"accepted": [n_b], "tokens": [int64 arrays of n_b + 1 tokens], "paths": [accepted
        node indices], "tried", "hits": [per-rank counts], "seconds": float}.
        """
        rows = [self._get(s) for s in sessions]
        assert drafts.shape[0] == len(rows) == len(gammas) == len(blocks)
        temps = list(temperature) if isinstance(temperature, (list, tuple)) else [temperature] * len(rows)
        trees = [Tree.chain(drafts[b, :g]) if parents is None else Tree.from_rows(drafts[b], parents[b], g)
                 for b, g in enumerate(gammas)]
        feeds, masks = [], []
        for row, tree, n_blocks in zip(rows, trees, blocks):
            assert row.cache is not None and row.cache.length == len(row.ids) - 1
            row.cache.resize(n_blocks)
            feeds.append(np.concatenate([row.ids[-1:], tree.tokens]))
            if tree.is_chain:
                masks.append(None)
            else:
                visible, offsets = tree.target_feed()
                masks.append(TreeFeed(row.cache.length, visible, row.cache.length + offsets))
        with Timer() as timer:
            logits = forward_rows(self.model, [r.cache for r in rows], feeds, [len(t) + 1 for t in trees], masks)
            verdicts = []
            for b, tree in enumerate(trees):
                rng = np.random.default_rng(seeds[b] if seeds else 0)
                q = draft_probs[b, : len(tree)] if draft_probs is not None else None
                verdicts.append(verify_tree(tree, logits[b].cpu().numpy(), temps[b], q, rng))
        return {"accepted": [v.accepted for v in verdicts], "tokens": [v.tokens for v in verdicts],
                "paths": [v.path for v in verdicts], "tried": [v.tried for v in verdicts],
                "hits": [v.hits for v in verdicts], "seconds": timer.seconds}

    def settle(self, session: str, tokens: np.ndarray, blocks: int, path: list[int] | None = None) -> int:
        """`tokens` joined the context: keep what the target cache holds of them (the pending
        token and the accepted nodes on `path`, default the chain's first ones, compacted in
        place; all but the last token), drop every other branch, keep `blocks` blocks.
        Answers held bytes."""
        s = self._get(session)
        tokens = np.asarray(tokens, dtype=np.int64)
        assert len(tokens) >= 1
        start = len(s.ids)                       # the pending token sat at start − 1
        path = list(range(len(tokens) - 1)) if path is None else list(path)
        s.ids = np.concatenate([s.ids, tokens])
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


@dataclass
class _Turn:
    session: str
    remaining: int
    temperature: float
    gamma: int | None
    rng: np.random.Generator
    width: int | None = None
    prompt_tokens: int = 0
    prefilled: int = 0            # prompt tokens computed at join (the rest were reused)
    stats: SpecStats = field(default_factory=SpecStats)
    new_ids: list[int] = field(default_factory=list)


class Driver:
    """Runs speculative steps for the sessions that joined, batched: one draft pass and one
    target forward per step for all of them; sessions join and leave between steps.

    `draft` needs: has, open, extend, propose, accept, close (see DraftCore).
    `memory` needs: has, open_session, prefill, grant_batch, commit_batch, finish, observe_costs
    (see MemoryManager). With `measure_cost`, each step's seconds per draft token and seconds of
    the target forward of M = γ + 1 tokens are sent to the memory side (it picks γ* from that
    cost curve when no fixed γ is asked).
    """

    def __init__(
        self, verifier: VerifierCore, draft, memory, stop_ids: tuple[int, ...] = (), measure_cost: bool = False,
        gamma_max: int = 8,
    ):
        self.verifier, self.draft, self.memory = verifier, draft, memory
        self.stop_ids = set(stop_ids)
        self.measure_cost = measure_cost
        self._turns: dict[str, _Turn] = {}
        self.gamma_max = gamma_max
        self._anchors: dict[int, float] | None = None    # t_t at M = 1 and γmax + 1, timed once
        self._anchored = False                           # ... and sent to the memory side

    def anchor_costs(self) -> None:
        """Send the memory side the target's cost at M = 1 and M = γmax + 1 (timed once, on the
        first call): steps only observe the Ms they use, and a curve known at M = 1 and 2 alone
        would be extrapolated (and γ held back) by noise. Called before the first step; call
        `memory_restarted` when the memory side lost what it had."""
        if self._anchors is None:
            self._anchors = self.verifier.time_forwards((1, self.gamma_max + 1))
        for m, seconds in self._anchors.items():
            self.memory.observe_costs(None, m, seconds)
        self._anchored = True

    def memory_restarted(self) -> None:
        """The memory side is new: its cost curve is empty; the next step sends the anchors again."""
        self._anchored = False

    @property
    def active(self) -> list[str]:
        return list(self._turns)

    def join(
        self,
        session: str,
        token_ids: np.ndarray,
        keep: int,
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int = 0,
        gamma: int | None = None,
        width: int | None = None,
    ) -> None:
        """Start a turn: make `token_ids` (whole context; first `keep` unchanged) resident in both
        caches. `gamma` fixes the draft nodes per step and `width` caps the tree's width (default:
        both chosen by the memory side; a fixed γ alone is a chain). Raises OverBudget (nothing
        changed) when the budget cannot hold the prompt."""
        if session in self._turns:
            raise SessionBusy(f"session {session!r} is already generating")
        assert max_new_tokens >= 1
        ids = np.asarray(token_ids, dtype=np.int64)
        if not self.memory.has(session):
            self.memory.open_session(session)
            keep = 0
        answer = self.memory.prefill(session, keep, len(ids) - keep)
        self._drop_evicted(answer["evicted"])
        blocks = answer["blocks"]
        if TARGET in answer["rebuild"]:
            self.verifier.drop(session)
        self.verifier.prefill(session, ids, keep, blocks[TARGET])
        if DRAFT in answer["rebuild"] or not self.draft.has(session):
            self.draft.open(session, ids, blocks[DRAFT])
        else:
            self.draft.extend(session, ids, keep, blocks[DRAFT])
        remaining = min(max_new_tokens, self.verifier.max_context - len(ids))
        self._turns[session] = _Turn(session, remaining, temperature, gamma, np.random.default_rng(seed), width,
                                     len(ids), self.verifier.prefilled(session) + 1)

    def leave(self, session: str) -> None:
        """Stop a turn early; the session stays open (idle) for its next turn."""
        self._turns.pop(session)
        self.memory.finish(session)

    def step(self) -> list[dict]:
        """One speculative step over every active session. Answers one event per session:
        {"session", "tokens": int64 array (new this step), "done": bool, "stats": dict,
        "error": None or (exception class name, message)}. Done sessions leave the batch."""
        if self.measure_cost and not self._anchored:
            self.anchor_costs()
        events, granted = [], []
        turns = list(self._turns.values())
        requests = []
        for turn in turns:
            context = len(self.verifier.ids(turn.session))
            limit = min(turn.remaining - 1, self.verifier.max_context - context)
            requests.append({"session": turn.session, "gamma": turn.gamma, "limit": limit, "width": turn.width})
        for turn, answer in zip(turns, self.memory.grant_batch(requests)):
            if "error" in answer:
                self._turns.pop(turn.session)
                self.memory.finish(turn.session)
                events.append(self._event(turn, np.zeros(0, dtype=np.int64), True, None, answer["error"]))
                continue
            self._drop_evicted(answer["evicted"])
            ids = self.verifier.ids(turn.session)
            if TARGET in answer["rebuild"]:
                self.verifier.drop(turn.session)
                self.verifier.prefill(turn.session, ids, 0, answer["blocks"][TARGET])
            if DRAFT in answer["rebuild"]:
                self.draft.open(turn.session, ids, answer["blocks"][DRAFT])
            granted.append((turn, answer["gamma"], answer.get("width", 1), answer["blocks"]))
        if not granted:
            return events
        sessions = [t.session for t, _, _, _ in granted]
        gammas = [g for _, g, _, _ in granted]
        widths = [w for _, _, w, _ in granted]
        drafts = np.zeros((len(granted), max(gammas)), dtype=np.int64)
        parents = np.tile(np.arange(-1, max(gammas) - 1, dtype=np.int64), (len(granted), 1))
        probs, draft_s, forward_s = None, 0.0, {}
        temperatures = [t.temperature for t, _, _, _ in granted]
        seeds = [t.rng.integers(0, 2**63, size=2) for t, _, _, _ in granted]
        speculating = [i for i, g in enumerate(gammas) if g > 0]
        if speculating:
            proposal = self.draft.propose(
                [sessions[i] for i in speculating],
                [gammas[i] for i in speculating],
                [granted[i][3][DRAFT] for i in speculating],
                [temperatures[i] for i in speculating],
                [int(seeds[i][0]) for i in speculating],
                [widths[i] for i in speculating],
            )
            width = proposal["tokens"].shape[1]
            drafts[speculating, :width] = proposal["tokens"]
            parents[speculating, :width] = proposal["parents"]
            if proposal["probs"] is not None:
                probs = np.zeros((len(granted), max(gammas), proposal["probs"].shape[-1]), dtype=np.float32)
                probs[speculating, :width] = proposal["probs"]
            draft_s = proposal["seconds"]
            forward_s = {int(m): t for m, t in (proposal.get("forward_seconds") or {}).items()}
        target_blocks = [b[TARGET] for _, _, _, b in granted]
        verify_seeds = [int(s[1]) for s in seeds]
        verdict = self.verifier.verify(sessions, drafts, gammas, target_blocks, temperatures, probs, verify_seeds,
                                       parents)
        if self.measure_cost and verdict["seconds"] > 0:
            # t_d(M): the draft's forwards that fed M tokens a row (M = 1 for a chain, the tree's
            # width; a catch-up of pending tokens is not a draft token's cost); t_t(M): the target
            # forward of M = Nmax + 1
            wide = {str(m): seconds for m, seconds in forward_s.items() if m > 1}
            self.memory.observe_costs(forward_s.get(1), max(gammas) + 1, verdict["seconds"], wide or None)
        kept = []
        for i, (turn, _, _, _) in enumerate(granted):
            tokens = verdict["tokens"][i][: turn.remaining]
            stops = [k for k, t in enumerate(tokens) if int(t) in self.stop_ids]
            kept.append(tokens[: stops[0] + 1] if stops else tokens)
        commits = self.memory.commit_batch(
            [{"session": t.session, "accepted": verdict["accepted"][i], "emitted": len(kept[i]),
              "tried": verdict["tried"][i], "hits": verdict["hits"][i]}
             for i, (t, _, _, _) in enumerate(granted)]
        )
        for i, (turn, gamma, width, _) in enumerate(granted):
            n, tokens, blocks = verdict["accepted"][i], kept[i], commits[i]["blocks"]
            path = [int(node) for node in verdict["paths"][i]]
            done = (len(tokens) and int(tokens[-1]) in self.stop_ids) or len(tokens) >= turn.remaining
            self.verifier.settle(turn.session, tokens, blocks[TARGET], path)
            self.draft.accept(turn.session, n, tokens, blocks[DRAFT], path)
            turn.remaining -= len(tokens)
            turn.new_ids.extend(int(t) for t in tokens)
            step = StepStats(turn.session, gamma, n, len(tokens), draft_s, verdict["seconds"], width)
            turn.stats.add(step)
            if done:
                self._turns.pop(turn.session)
                self.memory.finish(turn.session)
            events.append(self._event(turn, tokens, bool(done), step, None))
        return events

    def run(self):
        """Step until no session is active, yielding each step's events."""
        while self._turns:
            yield self.step()

    def turn_ids(self, session: str) -> np.ndarray:
        return np.asarray(self._turns[session].new_ids, dtype=np.int64)

    def _event(self, turn: _Turn, tokens, done: bool, step: StepStats | None, error: list | None) -> dict:
        return {
            "session": turn.session,
            "tokens": np.asarray(tokens, dtype=np.int64),
            "done": done,
            "step": step.as_dict() if step else None,
            "stats": {**turn.stats.as_dict(), "prompt_tokens": turn.prompt_tokens,
                      "prefilled_tokens": turn.prefilled},
            "error": list(error) if error else None,
        }

    def _drop_evicted(self, sessions: list[str]) -> None:
        for sid in sessions:
            if self.verifier.has(sid):
                self.verifier.drop(sid)
            self.draft.close(sid)
