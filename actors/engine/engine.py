"""`Engine`: the draft core, the verifier core, the memory manager and the driver in one process.

For tests, benchmarks and in-process use. The draft, memory and verifier actors run the same
three cores in three processes; this class is the reference wiring.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .draft import DraftCore
from .driver import DRAFT, TARGET, Driver, TurnEvent
from .errors import TokenizerMismatch
from .kvcache import blocks_for
from .manager import MemoryManager
from .memory_model import lower_bound_budget
from .prefix import PREFIXES
from .verifier import VerifierCore


class Engine:
    """Memory-budgeted speculative decoding with a draft and a target model in this process.

    budget_bytes: the KV budget of both caches, all sessions (default: a static cache of the
    target's whole context for one session, both models). gamma: a fixed γ per step (default:
    the manager picks γ* from the running α estimate and c). tree: the widest token tree a step
    may draft (1, the default: chains; the manager picks each step's shape, and with a fixed
    `gamma` the tree has that many nodes, each with up to `tree` children). forwards: a cap on
    the draft forwards that grow a tree (default: the manager's F* for its shape, γ for a fixed
    γ; the nodes past the first F − 1 taken are leaves; a chain feeds every node). cost_ratio:
    a fixed c = t_draft / t_target (default: measured online by the driver, from a calibration
    of the target's cost curve done here, `Driver.anchor_costs`). max_context: a cap below the models' own.
    vocab_rows: the draft head's base rows (`DraftCore`). prefix_tokens: each model keeps the KV of
    up to this many tokens of recent prompts' prefixes for new sessions to start from
    (`prefix.PrefixStore`; its bytes are reserved in the budget; 0, the default here: none).
    lookup: the most tokens a step copies from the context as a tail of the draft's path, in the
    slots its grant holds anyway (`lookup`; 0, the default here: none).

    The Medusa-style static baseline is this class with block_tokens = max_context: each cache
    is one block of the whole context, allocated at prefill and never shrunk.
    """

    def __init__(
        self,
        draft_model,
        target_model,
        tokenizer=None,
        budget_bytes: int | None = None,
        block_tokens: int = 16,
        gamma: int | None = None,
        gamma_max: int = 8,
        cost_ratio: float | None = None,
        spare_blocks: int = 1,
        max_context: int | None = None,
        tree: int = 1,
        vocab_rows: int | None = None,
        prefix_tokens: int = 0,
        forwards: int | None = None,
        lookup: int = 0,
    ):
        check_pair(draft_model, target_model, tokenizer)
        self.tokenizer = tokenizer
        self.draft = DraftCore(draft_model, block_tokens, spare_blocks, vocab_rows, prefix_tokens)
        target_context = target_model.config.get_text_config(decoder=True).max_position_embeddings
        context = min(self.draft.max_context, target_context, max_context or target_context)
        self.verifier = VerifierCore(target_model, tokenizer, block_tokens, spare_blocks, context, prefix_tokens)
        if budget_bytes is None:
            tokens = blocks_for(self.verifier.max_context, block_tokens) * block_tokens
            budget_bytes = tokens * (self.draft.bytes_per_token + self.verifier.bytes_per_token)
            budget_bytes += self.draft.prefixes.capacity_bytes + self.verifier.prefixes.capacity_bytes
        self.memory = MemoryManager(
            budget_bytes, block_tokens, spare_blocks, gamma_max, cost_ratio or 0.1, width_max=tree
        )
        self.memory.add_holder(DRAFT, self.draft.bytes_per_token, self.draft.weight_bytes)
        self.memory.add_holder(TARGET, self.verifier.bytes_per_token, self.verifier.weight_bytes)
        for holder, core in ((DRAFT, self.draft), (TARGET, self.verifier)):
            if core.prefixes.capacity_bytes:  # the prefix stores' most, in the budget from the start
                self.memory.reserve(holder, PREFIXES, core.prefixes.capacity_bytes)
        eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
        self.driver = Driver(
            self.verifier,
            self.draft,
            self.memory,
            (eos,) if eos is not None else (),
            measure_cost=cost_ratio is None,
            gamma_max=gamma_max,
        )
        if cost_ratio is None:  # calibrate now: the first turn does not pay for it
            self.driver.anchor_costs()
        self.gamma, self.tree, self.forwards, self.lookup = gamma, tree, forwards, lookup
        self._anonymous = 0

    # chat

    def chat(self, session: str, message: str, max_new_tokens: int = 64, temperature: float = 0.0, seed: int = 0):
        """One chat turn: answers (reply text, reply token ids, stats dict)."""
        ids: list[int] = []
        stats: dict = {}
        for tokens, turn_stats in self.chat_stream(session, message, max_new_tokens, temperature, seed):
            ids.extend(tokens.tolist())
            stats = turn_stats
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return text, np.asarray(ids, dtype=np.int64), stats

    def chat_stream(
        self, session: str, message: str, max_new_tokens: int = 64, temperature: float = 0.0, seed: int = 0
    ) -> Iterator[tuple[np.ndarray, dict]]:
        """One chat turn, yielding (new token ids, running stats) as each step accepts them."""
        if not self.verifier.has(session):
            self.verifier.open(session)
        ids, keep = self.verifier.chat_prompt(session, message)
        self.driver.join(
            session, ids, keep, max_new_tokens, temperature, seed, self.gamma, self.tree, self.forwards, self.lookup
        )
        reply: list[int] = []
        try:
            for event in self._drain(session):
                reply.extend(event.tokens.tolist())
                yield event.tokens, event.stats
        finally:
            if session in self.driver.active:
                self.driver.leave(session)
            self.verifier.end_turn(session, message, np.asarray(reply, dtype=np.int64))

    # raw token ids

    def generate_ids(
        self,
        prompt_ids,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        seed: int = 0,
        gamma: int | None = None,
        session: str | None = None,
        tree: int | None = None,
        forwards: int | None = None,
        lookup: int | None = None,
    ) -> tuple[np.ndarray, dict]:
        """Continue `prompt_ids` (no chat template, no stop token); answers (new ids, stats).
        Without `session` a throwaway session is used and released."""
        sessions = None if session is None else [session]
        out = self.generate_batch(
            [prompt_ids], max_new_tokens, temperature, [seed], gamma, sessions, tree, forwards, lookup
        )
        return out[0]

    def generate_batch(
        self,
        prompts: list,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        seeds: list[int] | None = None,
        gamma: int | None = None,
        sessions: list[str] | None = None,
        tree: int | None = None,
        forwards: int | None = None,
        lookup: int | None = None,
    ) -> list[tuple[np.ndarray, dict]]:
        """Continue several prompts as one batch (one draft pass and one target forward per step);
        gamma, tree, forwards and lookup default to the Engine's."""
        throwaway = sessions is None
        if sessions is None:
            sessions = [self._new_session() for _ in prompts]
        seeds = seeds or list(range(len(prompts)))
        stop_ids, self.driver.stop_ids = self.driver.stop_ids, set()
        try:
            for sid, prompt, seed in zip(sessions, prompts, seeds):
                if not self.verifier.has(sid):
                    self.verifier.open(sid)
                ids, keep = self.verifier.check_prompt(sid, prompt)
                self.driver.join(
                    sid,
                    ids,
                    keep,
                    max_new_tokens,
                    temperature,
                    seed,
                    self.gamma if gamma is None else gamma,
                    self.tree if tree is None else tree,
                    self.forwards if forwards is None else forwards,
                    self.lookup if lookup is None else lookup,
                )
            results: dict[str, tuple[list[int], dict]] = {sid: ([], {}) for sid in sessions}
            while self.driver.active:
                for event in self.driver.step():
                    _raise(event)
                    results[event.session][0].extend(event.tokens.tolist())
                    results[event.session][1].update(event.stats)
        finally:
            self.driver.stop_ids = stop_ids
            for sid in sessions:
                if sid in self.driver.active:
                    self.driver.leave(sid)
                if throwaway:
                    self.close(sid)
        return [(np.asarray(results[sid][0], dtype=np.int64), results[sid][1]) for sid in sessions]

    # sessions and memory

    def close(self, session: str) -> None:
        """Release the session everywhere (no error if a side never saw it)."""
        if self.verifier.has(session):
            self.verifier.close(session)
        self.draft.close(session)
        if self.memory.has(session):
            self.memory.release(session)

    def kv_lower_bound(
        self, contexts: list[int], alpha: float, cost_ratio: float, fraction: float = 0.96
    ) -> tuple[int, int]:
        """(KV bytes, γ*): the smallest budget keeping `fraction` of the best expected speedup for
        sessions of these committed lengths (memory_model.lower_bound_budget with this engine's
        bytes per token and block size)."""
        return lower_bound_budget(
            contexts,
            alpha,
            cost_ratio,
            self.verifier.bytes_per_token,
            self.draft.bytes_per_token,
            self.memory.block_tokens,
            fraction,
            self.memory.gamma_max,
        )

    def usage(self) -> dict:
        """The manager's accounting plus the bytes the cache tensors really hold."""
        usage = self.memory.usage()
        usage["held"] = {DRAFT: self.draft.held_bytes(), TARGET: self.verifier.held_bytes()}
        return usage

    def _drain(self, session: str):
        while session in self.driver.active:
            for event in self.driver.step():
                if event.session == session:
                    _raise(event)
                    yield event

    def _new_session(self) -> str:
        self._anonymous += 1
        return f"_gen{self._anonymous}"


def check_pair(draft_model, target_model, tokenizer=None) -> None:
    """Refuse a draft/target pair that does not share a vocabulary (TokenizerMismatch)."""
    draft_vocab = draft_model.config.get_text_config(decoder=True).vocab_size
    target_vocab = target_model.config.get_text_config(decoder=True).vocab_size
    if draft_vocab != target_vocab:
        raise TokenizerMismatch(f"draft vocabulary {draft_vocab} != target vocabulary {target_vocab}")
    if tokenizer is not None and len(tokenizer) > target_vocab:
        raise TokenizerMismatch(f"tokenizer has {len(tokenizer)} tokens, the models {target_vocab}")


def _raise(event: TurnEvent) -> None:
    if event.error is not None:
        raise event.error
