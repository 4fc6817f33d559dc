"""Context lookup: candidate tokens copied from earlier in the context, a free branch of a tree.

Text repeats itself: code names its identifiers again, an answer quotes its question, a chat turn
its predecessors. When the last n tokens of the context (the committed ids and the draft's path)
occurred before, the tokens that followed them then are a guess at what follows now (prompt
lookup decoding, and the n-gram speculators of llama.cpp). The guess costs no draft forward, only
the target rows that verify it, so a step hangs it under the deepest node of the draft's
most likely path as a tail of deterministic nodes (point masses in `tree.verify_tree`: a node is
accepted with the target's probability of its token, so the walk stays lossless, greedy or
sampled). A tail whose tokens the target takes joins the context like any accepted path; the
draft feeds them at the start of its next proposal, as it does a leaf.

The tail only uses KV slots the step's grant already holds (the rounding of its last block and the
spare block), so the memory model's accounting is unchanged: a step whose grant has no room left
proposes no tail. Its length is priced on the target's calibrated cost curve (`tail_cap`), and a
step whose context alone offers a continuation that pays better than the draft's nodes verifies it
without drafting at all (`alone_pays`).
"""

from __future__ import annotations

import numpy as np

from .memory_model import CostCurve, expected_tokens, tail_length

#: The longest and the shortest suffix matched (the longest that occurs is taken): one shared
#: token is too weak a cue (it proposes a tail nearly every step, and is mostly wrong).
NGRAM_MAX, NGRAM_MIN = 4, 2


def continuation(ids: np.ndarray, length: int, n_max: int = NGRAM_MAX, n_min: int = NGRAM_MIN) -> np.ndarray:
    """Up to `length` tokens that followed the most recent earlier occurrence of the longest
    suffix of `ids` (n_max down to n_min tokens) that occurred before; empty if none did."""
    ids = np.asarray(ids, dtype=np.int64)
    total = len(ids)
    if length <= 0:
        return ids[:0]
    for n in range(min(n_max, total - 1), n_min - 1, -1):
        key = ids[total - n :]
        starts = np.flatnonzero(ids[: total - n] == key[0])  # s + n <= total - 1: a token follows
        for j in range(1, n):
            starts = starts[ids[starts + j] == key[j]]
        if len(starts):
            s = int(starts[-1]) + n
            return ids[s : s + length].copy()
    return ids[:0]


def tail(context: np.ndarray, tokens: np.ndarray, path: list[int], n: int, room: int) -> tuple[np.ndarray, np.ndarray]:
    """The lookup tail of one proposal row of `n` draft nodes (`tokens`, its main path `path`) on
    `context` (the committed ids): its tokens (at most `room`) and their parents (the first one's:
    the path's deepest node, −1 the root when the path is empty; the others' the node before)."""
    found = continuation(np.concatenate([context, tokens[path]]), room)
    parent = np.arange(n - 1, n - 1 + len(found), dtype=np.int64)
    if len(found):
        parent[0] = path[-1] if path else -1
    return found, parent


def tail_rate(counts: list[int]) -> float:
    """ρ: tail tokens accepted over tried ([tried, accepted]), with a prior of one of two."""
    return (counts[1] + 1) / (counts[0] + 2)


def tail_cap(curve: CostCurve, cap: int, alpha: float, depth: int, n: int, draft_seconds: float, counts) -> int:
    """The tail of at most `cap` tokens below a proposal row of `n` nodes worth its target rows
    (`memory_model.tail_length` on `curve`): the row expects E(α, d) tokens from its main path of
    depth d in `draft_seconds` and t_t(n + 1), and reaches the tail with α^d."""
    extra = [curve.target(n + 1 + k) - curve.target(n + 1) for k in range(cap + 1)]
    seconds = draft_seconds + curve.target(n + 1)
    return tail_length(expected_tokens(alpha, depth), seconds, alpha**depth, tail_rate(counts), extra)


def alone_pays(curve: CostCurve, found: int, alpha: float, gamma: int, draft_seconds: float, counts) -> bool:
    """Whether a step should verify `found` copied tokens from the root without its draft: their
    best tail (`tail_cap` of a row without nodes) gets more tokens a second than γ draft nodes at
    acceptance α taking `draft_seconds` and t_t(γ + 1)."""
    length = tail_cap(curve, found, 1.0, 0, 0, 0.0, counts)
    copied = expected_tokens(tail_rate(counts), length) / curve.target(1 + length)
    return length > 0 and copied > expected_tokens(alpha, gamma) / (draft_seconds + curve.target(gamma + 1))
