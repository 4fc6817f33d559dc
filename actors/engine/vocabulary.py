"""A draft's LM head over part of the vocabulary (FR-Spec): the frequent tokens and the session's own.

A 0.5B draft's head is 136M of its 494M parameters (152k tokens x 896): with its layers in 4 bits
it is a large share of every draft forward. Most of what a target emits comes from few tokens: byte-pair
ids are numbered in merge order, so the first 32k ids of Qwen2's 152k are the frequent ones, and
the rarer tokens a session emits are mostly ones its context already holds (an identifier, a
name). A session's draft forwards therefore compute only the head rows of

    S = { ids < rows }  ∪  { the 16-row blocks of the ids in the session's context }  ∪  { stop ids }

and leave every other logit at −inf. Speculation stays lossless: the draft's q is a distribution
over S, the target verifies every token (a greedy target token outside S is just a rejected
position, and sampling's residual max(p − q, 0) covers the tokens q cannot draw). Each computed
logit is what the whole head computes for that row, bit for bit (`q4.linear` with `blocks`).

The context part is bounded (`max_blocks`): past it, the blocks seen least recently leave first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import numpy as np
import torch

from specmemo.native import q4

from .quantized import Int4Linear

AUTO_ROWS = 32768  # the frequent ids of a byte-level BPE vocabulary (merge order; docs/decisions.md)
MAX_CONTEXT_BLOCKS = 512  # 8,192 context rows at most: a quarter of the default base


def auto_rows(model) -> int:
    """The base rows for `model`'s draft head: AUTO_ROWS when the head is 4-bit and at least four
    times larger, else 0 (the whole head: a small vocabulary has little to save, and a head of
    another precision has no row-block product)."""
    head = model.get_output_embeddings()
    if isinstance(head, Int4Linear) and head.out_features >= 4 * AUTO_ROWS:
        return AUTO_ROWS
    return 0


def stop_ids(model) -> set[int]:
    """Token ids the model's configs name as end, start or padding: always in a session's subset."""
    ids: set[int] = set()
    for config in (model.config, getattr(model, "generation_config", None)):
        for name in ("eos_token_id", "bos_token_id", "pad_token_id"):
            value = getattr(config, name, None) if config is not None else None
            ids.update(v for v in np.atleast_1d(value if value is not None else []).tolist() if isinstance(v, int))
    return ids


class DraftVocabulary:
    """The subset rule for one draft model (see the module doc); `session()` makes a session's head."""

    def __init__(self, head: Int4Linear, rows: int, always: Iterable[int] = (), max_blocks: int = MAX_CONTEXT_BLOCKS):
        n = head.out_features
        if not 0 < rows < n or rows % q4.BLOCK_ROWS:
            raise ValueError(f"vocabulary rows must be a multiple of {q4.BLOCK_ROWS} in (0, {n}), not {rows}")
        self.head, self.rows, self.max_blocks = head, rows, max_blocks
        self.base = np.arange(rows // q4.BLOCK_ROWS, dtype=np.int64)
        self.always = sorted({i // q4.BLOCK_ROWS for i in always if rows <= i < n})

    @classmethod
    def for_model(cls, model, rows: int | None = None) -> DraftVocabulary | None:
        """The rule for `model` with `rows` base rows (None: `auto_rows`); None for the whole head."""
        rows = auto_rows(model) if rows is None else rows
        if rows <= 0:
            return None
        head = model.get_output_embeddings()
        if not isinstance(head, Int4Linear):
            raise ValueError(f"a vocabulary subset needs a 4-bit draft head, not {type(head).__name__}")
        if rows >= head.out_features:
            return None
        return cls(head, rows, stop_ids(model))

    def session(self) -> SessionVocabulary:
        return SessionVocabulary(self)


class SessionVocabulary:
    """One session's head: the base rows, the stop ids' blocks and its context's blocks."""

    def __init__(self, rule: DraftVocabulary):
        self.rule = rule
        self._seen: OrderedDict[int, None] = OrderedDict()  # context blocks, least recently seen first
        self._index = np.concatenate([rule.base, np.asarray(rule.always, dtype=np.int64)])

    @property
    def rows(self) -> int:
        """Head rows each forward computes."""
        return len(self._index) * q4.BLOCK_ROWS

    def add(self, ids) -> None:
        """Tokens joined the session's context: their blocks are in the subset from now on."""
        rule, changed = self.rule, False
        for block in {int(i) // q4.BLOCK_ROWS for i in np.asarray(ids).reshape(-1) if int(i) >= rule.rows}:
            if block in rule.always:
                continue
            changed |= block not in self._seen
            self._seen[block] = None
            self._seen.move_to_end(block)
        while len(self._seen) > rule.max_blocks:
            self._seen.popitem(last=False)
        if changed:
            extra = np.fromiter(self._seen, dtype=np.int64, count=len(self._seen))
            self._index = np.concatenate([rule.base, np.asarray(rule.always, dtype=np.int64), extra])

    def contains(self, token: int) -> bool:
        return bool(np.isin(int(token) // q4.BLOCK_ROWS, self._index))

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits [..., V] of the normed hidden states [..., H]: the head's own values on the
        subset's rows, −inf on the others."""
        return self.rule.head(hidden, self._index)
