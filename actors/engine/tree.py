"""Token trees: the candidate continuations one speculative step verifies in one target forward.

A tree of N nodes hangs under the root, the session's pending token (the last committed token,
whose KV the target has not computed yet). Node i holds a draft token, its parent (−1 for the
root, else an earlier node: nodes are in topological order) and its rank among its siblings
(1 = the draft's most likely child). A node drawn by sampling also carries the draft distribution
q it was drawn from; a node picked deterministically (the draft's rank-r token) has q = δ_token.
A chain of γ drafts is the width-1 tree: parents −1, 0, 1, ..., γ−2.

Verification walks from the root. At a node whose target distribution is p:
- greedy: move to the child whose token is argmax p, if there is one; else emit argmax p;
- sampled (the multi-draft rule of SpecInfer): try the children in rank order, accepting child
  c with probability min(1, p(c)/q_c(c)); after a rejection p ← norm(max(0, p − q_c)); when
  every child is rejected emit x ~ p. Each trial is a one-draft speculative-sampling step against
  the current residual, so the emitted token is distributed exactly as p, provided each child
  was drawn from its q_c given everything before it (the draft draws siblings from q without
  replacement: q_c is q less the earlier siblings' tokens). With point masses (q_c = δ_c) child
  r is accepted with probability p(c_r).
A walk also counts, for each rank r, the visited nodes that had an r-th child ("tried") and those
whose r-th child was accepted ("hits"): the rank acceptance rates a_r the memory model sizes
trees from. For a chain, hits/tried at rank 1 is the usual acceptance rate α.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .speculative import probabilities, sample


@dataclass(frozen=True)
class Tree:
    """N draft nodes: `tokens` int64 [N], `parents` int64 [N] (−1: the root), `ranks` [N] (1-based)."""

    tokens: np.ndarray
    parents: np.ndarray
    ranks: np.ndarray

    def __post_init__(self):
        n = len(self.tokens)
        assert self.parents.shape == (n,) and self.ranks.shape == (n,)
        assert all(-1 <= p < i for i, p in enumerate(self.parents)), "nodes must be in topological order"

    @classmethod
    def chain(cls, tokens) -> Tree:
        tokens = np.asarray(tokens, dtype=np.int64)
        n = len(tokens)
        return cls(tokens, np.arange(-1, n - 1, dtype=np.int64), np.ones(n, dtype=np.int64))

    @classmethod
    def from_rows(cls, tokens: np.ndarray, parents: np.ndarray, n: int) -> Tree:
        """The first n nodes of a padded proposal row; ranks recomputed from sibling order."""
        tokens = np.asarray(tokens[:n], dtype=np.int64)
        parents = np.asarray(parents[:n], dtype=np.int64)
        ranks = np.zeros(n, dtype=np.int64)
        seen: dict[int, int] = {}
        for i, p in enumerate(parents.tolist()):
            seen[p] = seen.get(p, 0) + 1
            ranks[i] = seen[p]
        return cls(tokens, parents, ranks)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def is_chain(self) -> bool:
        return bool(np.array_equal(self.parents, np.arange(-1, len(self) - 1)))

    def depths(self) -> np.ndarray:
        """Depth of each node (the root's children have depth 1)."""
        depth = np.zeros(len(self), dtype=np.int64)
        for i, p in enumerate(self.parents.tolist()):
            depth[i] = 1 if p < 0 else depth[p] + 1
        return depth

    def children(self) -> dict[int, list[int]]:
        """Children of each node (−1: the root), in rank order."""
        kids: dict[int, list[int]] = {}
        for i in np.argsort(self.ranks, kind="stable").tolist():
            kids.setdefault(int(self.parents[i]), []).append(i)
        return kids

    def main_path(self) -> list[int]:
        """The nodes of the most likely path: each node's first child, root down."""
        kids, path = self.children(), [-1]
        while path[-1] in kids:
            path.append(kids[path[-1]][0])
        return path[1:]

    def ancestry(self) -> np.ndarray:
        """bool [N, N]: [i, j] when node j is node i or one of its ancestors."""
        n = len(self)
        seen = np.zeros((n, n), dtype=bool)
        for i, p in enumerate(self.parents.tolist()):
            if p >= 0:
                seen[i] = seen[p]
            seen[i, i] = True
        return seen

    def target_feed(self) -> tuple[np.ndarray, np.ndarray]:
        """What the target sees when it verifies this tree after the root: (visible bool [N+1, N+1],
        position offsets [N+1]) over the root and the nodes, in that order."""
        n = len(self)
        visible = np.zeros((n + 1, n + 1), dtype=bool)
        visible[:, 0] = True
        visible[1:, 1:] = self.ancestry()
        return visible, np.concatenate([[0], self.depths()])


@dataclass
class Verdict:
    """One walk: the accepted nodes root-down, the emitted tokens (their tokens, then one from the
    target), and the per-rank counts of children tried and accepted (index r−1 for rank r)."""

    path: list[int]
    tokens: np.ndarray
    tried: list[int]
    hits: list[int]

    @property
    def accepted(self) -> int:
        return len(self.path)


def verify_tree(
    tree: Tree,
    target_logits: np.ndarray,
    temperature: float,
    node_probs: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    ranks: int | None = None,
    counted: int | None = None,
) -> Verdict:
    """Walk `tree` against the target's logits [N+1, V] (row 0: the root, row i+1: node i).

    node_probs: float [N, V], the q each sampled node was drawn from (rows of zeros, or None for
    every node, mean deterministic picks). ranks: the length of the tried/hits lists (default:
    the widest node's child count). counted: only nodes below it count in tried/hits (the
    draft's; a lookup tail after them is not the draft's rank acceptance; default: all)."""
    n = len(tree)
    counted = n if counted is None else counted
    assert target_logits.ndim == 2 and target_logits.shape[0] == n + 1
    kids = tree.children()
    width = ranks if ranks is not None else max((len(k) for k in kids.values()), default=0)
    tried, hits = [0] * width, [0] * width
    path: list[int] = []
    node, row = -1, 0
    greedy = temperature <= 0.0
    while True:
        children = kids.get(node, [])
        for r in range(min(sum(c < counted for c in children), width)):
            tried[r] += 1
        if greedy:
            best = int(target_logits[row].argmax())
            chosen = next((c for c in children if int(tree.tokens[c]) == best), None)
            emit = best
        else:
            assert rng is not None
            p = probabilities(target_logits[row], temperature)
            chosen = None
            for c in children:
                token = int(tree.tokens[c])
                q = node_probs[c].astype(np.float64) if node_probs is not None and node_probs[c].any() else None
                q_token = float(q[token]) if q is not None else 1.0
                if q_token > 0.0 and rng.random() * q_token < p[token]:
                    chosen = c
                    break
                if q is None:
                    q = np.zeros_like(p)
                    q[token] = 1.0
                residual = np.maximum(p - q, 0.0)
                if residual.sum() > 0.0:
                    p = residual / residual.sum()
            emit = -1 if chosen is not None else sample(p, rng)  # read only when nothing is chosen
        if chosen is None:
            tokens = np.append(tree.tokens[path], emit).astype(np.int64)
            return Verdict(path, tokens, tried, hits)
        rank = children.index(chosen)
        if rank < width and chosen < counted:
            hits[rank] += 1
        path.append(chosen)
        node, row = chosen, chosen + 1
