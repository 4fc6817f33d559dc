"""The memory footprint of speculative decoding, its expected speedup, and the lower-bound budget.

Notation (docs/memory-model.md): α acceptance rate of one draft token, c = t_draft / t_target,
γ draft tokens per step, b tokens per block, L_i the committed context of session i (prompt and
generated tokens so far), kv_t / kv_d bytes per token of the target / draft KV cache.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import NamedTuple

from .blocks import blocks_for, kv_shape


def kv_bytes_per_token(config, element_bytes: int) -> int:
    # 2 (K and V) · layers · kv_heads · head_dim · bytes per element
    layers, kv_heads, head_dim = kv_shape(config)
    return 2 * layers * kv_heads * head_dim * element_bytes


def expected_tokens(alpha: float, gamma: int) -> float:
    # E(γ) = (1 − α^(γ+1)) / (1 − α); γ + 1 when α = 1
    assert 0.0 <= alpha <= 1.0 and gamma >= 0
    if alpha == 1.0:
        return float(gamma + 1)
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def tail_length(tokens: float, seconds: float, reach: float, rate: float, extra_seconds: list[float]) -> int:
    """The lookup tail L (0..len(extra_seconds) − 1) of most tokens a second for a step that
    expects `tokens` in `seconds` without one: a tail hangs below a path accepted whole with
    probability `reach`, each of its tokens accepted with probability `rate` given the ones before,
    and L tail rows add extra_seconds[L] to the target's forward (extra_seconds[0] = 0):
    L* = argmax (E + reach·Σ_{j≤L} rate^j) / (T + Δt(L)), the shortest on ties."""
    best, best_speed, gained = 0, tokens / seconds, 0.0
    for length in range(1, len(extra_seconds)):
        gained += reach * rate**length
        speed = (tokens + gained) / (seconds + extra_seconds[length])
        if speed > best_speed * (1 + 1e-9):
            best, best_speed = length, speed
    return best


def speedup(alpha: float, gamma: int, cost_ratio: float) -> float:
    # S(γ) = E(γ) / (γ·c + 1)
    return expected_tokens(alpha, gamma) / (gamma * cost_ratio + 1.0)


class CostCurve:
    """Measured step costs: t_t(M) seconds per target forward of M new tokens, M = 1..N_max+1, and
    t_d seconds per one-token draft forward (a chain's token or a tree's node). On a CPU the
    target's cost is far from flat in M for some precisions (float32 switches from GEMV to GEMM at
    M = 2) and nearly flat for others (int8 to M ≈ 9), which moves γ*.

    The target's curve is a shape times a level. The shape: calibration timings of the target
    alone at a few Ms (`anchor`; the newest per M), made non-decreasing in M (a forward of more
    tokens does not cost less; a single timing may say so by noise) and interpolated linearly
    between them. The level: an exponential average (weight 0.2) of in-situ seconds over the
    shape at the M a step used, one number for all Ms. Steps observe only the M they use, so a
    curve that kept each M's own average priced the used M by today's load and its neighbours by
    old timings: one noisy step could make γ + 1 look dearer than γ + 2 and hold γ where it was.
    Without anchors each M keeps its own average, interpolated between the observed Ms and
    extrapolated beyond the last with the slope of the last two (flat with one). Without any target
    observation, t_t(M) = 1 and t_d = c: the single-ratio model S(γ) = E(γ)/(γc + 1).
    """

    def __init__(self, cost_ratio: float = 0.1):
        self.prior_ratio = cost_ratio
        self.measured_draft_s: float | None = None  # an exponential average of t_d
        self.target_s: dict[int, float] = {}  # in-situ averages by M (reported; the curve without anchors)
        self.shape: dict[int, float] = {}  # calibration seconds by M
        self.scale = 1.0  # in-situ level over the shape
        self._monotone: dict[int, float] = {}

    @classmethod
    def from_anchors(cls, anchors: dict[int, float], scale: float = 1.0, draft_s: float | None = None) -> CostCurve:
        """A curve of calibration timings (seconds by M) at level `scale`, with t_d `draft_s`."""
        curve = cls()
        for m, seconds in anchors.items():
            curve.observe(m=m, target_s=seconds, anchor=True)
        curve.scale, curve.measured_draft_s = scale, draft_s
        return curve

    def observe(
        self,
        draft_s: float | None = None,
        m: int | None = None,
        target_s: float | None = None,
        weight: float = 0.2,
        anchor: bool = False,
    ) -> None:
        if draft_s is not None and draft_s >= 0:
            self.measured_draft_s = _blend(self.measured_draft_s, draft_s, weight)
        if m is None or target_s is None or target_s <= 0 or m < 1:
            return
        if anchor:
            self.shape[m] = target_s
            self._monotone = _non_decreasing(self.shape)
            return
        _average(self.target_s, m, target_s, weight)
        if self._monotone:
            self.scale = _blend(self.scale, target_s / _interpolate(self._monotone, m), weight)

    def target(self, m: int) -> float:
        if self._monotone:
            return self.scale * _interpolate(self._monotone, m)
        return _interpolate(self.target_s, m) if self.target_s else 1.0

    @property
    def draft_s(self) -> float:
        """t_d: as measured, else the prior c times t_t(1) (in the target's units)."""
        if self.measured_draft_s is None:
            return self.prior_ratio * self.target(1)
        return self.measured_draft_s

    @property
    def ratio(self) -> float:
        """c = t_d / t_t(1)."""
        return self.draft_s / self.target(1)

    def step_seconds(self, gamma: int, forwards: int | None = None) -> float:
        # a step of γ draft nodes, chain or tree: `forwards` one-token draft forwards (default γ:
        # the first feeds the root, each later one a node; a tree's other nodes are leaves, which
        # the draft never feeds), then one target forward of γ + 1 tokens
        return (gamma if forwards is None else forwards) * self.draft_s + self.target(gamma + 1)

    def as_dict(self) -> dict:
        return {
            "draft_s": self.draft_s,
            "target_s": {str(m): t for m, t in sorted(self.target_s.items())},
            "shape": {str(m): t for m, t in sorted(self.shape.items())},
            "scale": self.scale,
        }


def _non_decreasing(table: dict[int, float]) -> dict[int, float]:
    # each M's value raised to the largest at a smaller M
    out, top = {}, 0.0
    for m in sorted(table):
        top = max(top, table[m])
        out[m] = top
    return out


def _blend(old: float | None, new: float, weight: float) -> float:
    # an exponential average: `new` alone when there is no `old`
    return new if old is None else (1 - weight) * old + weight * new


def _average(table: dict[int, float], m: int, seconds: float, weight: float) -> None:
    table[m] = _blend(table.get(m), seconds, weight)


def _interpolate(table: dict[int, float], m: int) -> float:
    # linear between the nearest observed Ms; flat below the first; the last two's slope beyond
    if m in table:
        return table[m]
    known = sorted(table)
    lower = [k for k in known if k < m]
    upper = [k for k in known if k > m]
    if lower and upper:
        a, b = lower[-1], upper[0]
        return table[a] + (table[b] - table[a]) * (m - a) / (b - a)
    if upper:
        return table[upper[0]]
    if len(known) == 1:
        return table[known[0]]
    a, b = known[-2], known[-1]
    slope = (table[b] - table[a]) / (b - a)
    return max(table[b] + slope * (m - b), 1e-9)


def tree_expected_tokens(
    rates: list[float], nodes: int, width: int | None = None, forwards: int | None = None
) -> float:
    """E(N, w, F): expected tokens per step of an N-node tree whose nodes have at most `width`
    children (default: len(rates)), grown in F draft forwards (default N), when the r-th child of
    any node is accepted with probability a_r = rates[r−1], independently of its position
    (Sequoia's model). A node's value is the product of the rates on its path (the chance it is
    accepted), and E = 1 + the sum of the tree's values.
    With F = N the tree is the best one under the model (Sequoia's optimum): values only shrink
    down a path, so the N largest form a tree, and taking nodes one at a time by value, each
    offering its children, finds them. With F < N only the first F − 1 nodes taken are fed to the
    draft and offer children (the root's feed is the first forward); the other N − F + 1 are the
    best leaves left (EAGLE-2's re-ranking). The draft grows its trees the same way (greedy by its
    own path probabilities, sampled by these rates).
    The r-th choice is taken to be right no more often than the (r−1)-th (rates sorted). A chain
    (w = 1) gives (1 − α^(N+1)) / (1 − α)."""
    width = min(width or len(rates), len(rates))
    assert nodes >= 0 and all(0.0 <= a <= 1.0 for a in rates) and sum(rates) <= 1.0 + 1e-9
    ordered = sorted(rates[:width], reverse=True)
    return 1.0 + sum(_greedy_values(ordered, nodes if forwards is None else forwards, nodes))


def _greedy_values(rates: list[float], forwards: int, count: int) -> list[float]:
    # the values of the first `count` nodes taken best-first, the first forwards − 1 of them fed
    # (offering their children); the values taken never increase, so any N's tree is a prefix
    pool = [-a for a in rates]
    heapq.heapify(pool)
    values: list[float] = []
    while pool and len(values) < count:
        value = -heapq.heappop(pool)
        values.append(value)
        if len(values) < forwards:
            for a in rates:
                heapq.heappush(pool, -value * a)
    return values


def tree_speedup(rates: list[float], nodes: int, width: int, curve: CostCurve, forwards: int | None = None) -> float:
    # S(N, w, F) = E(N, w, F) · t_t(1) / (F · t_d(1) + t_t(N + 1))
    expected = tree_expected_tokens(rates, nodes, width, forwards)
    return expected * curve.target(1) / curve.step_seconds(nodes, forwards)


class TreeShape(NamedTuple):
    nodes: int  # N: draft nodes, the KV slots a step holds
    width: int  # w: the most children a node has
    forwards: int  # F <= N: draft forwards; the nodes past the first F − 1 taken are leaves


def tree_shape(
    rates: list[float],
    curve: CostCurve,
    fraction: float = 0.96,
    nodes_max: int = 16,
    width_max: int = 1,
    forwards_max: int | None = None,
) -> TreeShape:
    """(N*, w*, F*): the fewest nodes whose expected speedup, at their best F <= `forwards_max`
    (default: any), is within `fraction` of the best over N <= nodes_max, at the widest
    w <= min(width_max, len(rates), N).
    A tree costs the draft one forward per fed node whatever its width, and its leaves cost only
    their rows of the target's forward, so branching is free and the draft's own path
    probabilities decide where it pays (a chain where the draft is sure); F < N where a target row
    is cheaper than a draft forward's share of what a fed node adds."""
    width = max(1, min(width_max, len(rates)))
    best = _best_forwards(rates, curve, nodes_max, width, forwards_max)
    nodes = _first_within([speed for speed, _ in best], fraction)
    return TreeShape(nodes, max(1, min(width, nodes)), best[nodes][1])


def tree_forwards(rates: list[float], curve: CostCurve, nodes: int, width: int, forwards_max: int | None = None) -> int:
    """F*: the draft forwards (<= `forwards_max`) of the fastest tree of `nodes` nodes and width
    <= `width` (0 where none reaches `nodes`; a grant whose budget cut N* re-prices F for the N it
    can hold)."""
    return _best_forwards(rates, curve, nodes, width, forwards_max)[nodes][1]


def _best_forwards(
    rates: list[float], curve: CostCurve, nodes_max: int, width: int, forwards_max: int | None = None
) -> list[tuple[float, int]]:
    # (S(N, w, F), F) at the best F <= forwards_max for each N = 0..nodes_max (S = 0 where no such
    # F reaches N nodes), each F's greedy values summed once for every N
    ordered = sorted(rates[:width], reverse=True)
    base = curve.target(1)
    best = [(1.0, 0)] + [(0.0, 0)] * nodes_max
    for forwards in range(1, min(nodes_max, forwards_max or nodes_max) + 1):
        values = _greedy_values(ordered, forwards, nodes_max)
        expected = 1.0 + sum(values[: forwards - 1])
        for nodes in range(forwards, len(values) + 1):
            expected += values[nodes - 1]
            speed = expected * base / curve.step_seconds(nodes, forwards)
            if speed > best[nodes][0]:
                best[nodes] = (speed, forwards)
    return best


def _first_within(speeds: list[float], fraction: float) -> int:
    # the index of the first speed within `fraction` of the best (candidates come smallest first)
    best = max(speeds)
    return next(i for i, speed in enumerate(speeds) if speed >= fraction * best)


def chain_expected_tokens(depth_rates: list[float], gamma: int) -> float:
    """E(γ) of a chain whose node d is accepted with probability c_d = depth_rates[d − 1] given the
    nodes above it were: 1 + Σ_k Π_{d ≤ k} c_d. Equal rates give (1 − α^(γ+1)) / (1 − α)."""
    assert 0 <= gamma <= len(depth_rates) and all(0.0 <= c <= 1.0 for c in depth_rates)
    total, reach = 1.0, 1.0
    for c in depth_rates[:gamma]:
        reach *= c
        total += reach
    return total


def chain_length(depth_rates: list[float], curve: CostCurve, fraction: float = 0.96, gamma_max: int = 16) -> int:
    """γ*: the smallest γ <= min(gamma_max, len(depth_rates)) whose expected speedup
    E(γ) · t_t(1) / (γ·t_d + t_t(γ + 1)) is within `fraction` of the best (`chain_expected_tokens`)."""
    top = min(gamma_max, len(depth_rates))
    speeds = [chain_expected_tokens(depth_rates, g) * curve.target(1) / curve.step_seconds(g) for g in range(top + 1)]
    return _first_within(speeds, fraction)


def curve_speedup(alpha: float, gamma: int, curve: CostCurve) -> float:
    # S(γ) = E(γ) · t_t(1) / (γ·t_d + t_t(γ + 1)): tokens per second against one-token decoding
    return expected_tokens(alpha, gamma) * curve.target(1) / curve.step_seconds(gamma)


def gamma_star(alpha: float, cost_ratio: float | CostCurve, fraction: float = 0.96, gamma_max: int = 16) -> int:
    """The smallest γ in [0, gamma_max] with S(γ) >= fraction · max S (a single c, or a `CostCurve`):
    the width-1 case of `tree_shape`."""
    curve = cost_ratio if isinstance(cost_ratio, CostCurve) else CostCurve(cost_ratio)
    return tree_shape([alpha], curve, fraction, gamma_max, 1)[0]


@dataclass(frozen=True)
class Footprint:
    """Bytes of one generation step, by part. `kv` is what the memory manager charges."""

    kv: int
    logits: int
    total: int


def kv_tokens(context: int, gamma: int) -> int:
    # slots one cache needs while verifying γ drafts on a context of L committed tokens: L + γ
    return context + gamma


def kv_footprint(contexts: list[int], gamma: int, kv_target: int, kv_draft: int, block_tokens: int) -> int:
    # Σ_i ⌈(L_i + γ) / b⌉ · b · (kv_t + kv_d): both caches, block-rounded
    blocks = sum(blocks_for(kv_tokens(length, gamma), block_tokens) for length in contexts)
    return blocks * block_tokens * (kv_target + kv_draft)


def generation_footprint(
    contexts: list[int],
    gamma: int,
    kv_target: int,
    kv_draft: int,
    block_tokens: int,
    vocab: int,
    element_bytes: int,
    sampling: bool = False,
) -> Footprint:
    # M_gen = KV (above) + B·(γ+1)·V·e target logits (+ B·γ·V·e draft probabilities when sampling)
    kv = kv_footprint(contexts, gamma, kv_target, kv_draft, block_tokens)
    rows = len(contexts) * ((gamma + 1) + (gamma if sampling else 0))
    logits = rows * vocab * element_bytes
    return Footprint(kv=kv, logits=logits, total=kv + logits)


def lower_bound_budget(
    contexts: list[int],
    alpha: float,
    cost_ratio: float | CostCurve,
    kv_target: int,
    kv_draft: int,
    block_tokens: int,
    fraction: float = 0.96,
    gamma_max: int = 16,
) -> tuple[int, int]:
    """(KV bytes, γ*): the smallest KV budget that keeps `fraction` of the best expected speedup."""
    g = gamma_star(alpha, cost_ratio, fraction, gamma_max)
    return kv_footprint(contexts, g, kv_target, kv_draft, block_tokens), g


def tree_lower_bound_budget(
    contexts: list[int],
    rates: list[float],
    curve: CostCurve,
    kv_target: int,
    kv_draft: int,
    block_tokens: int,
    fraction: float = 0.96,
    nodes_max: int = 16,
    width_max: int = 2,
) -> tuple[int, TreeShape]:
    """(KV bytes, (N*, w*, F*)): the smallest KV budget that keeps `fraction` of the best expected
    speedup over trees of up to `nodes_max` nodes and `width_max` width. A tree of N nodes is
    granted the slots of a chain of γ = N (L + N per cache; the draft fills only the F − 1 it
    feeds), so the budget is the chain's at γ = N*."""
    shape = tree_shape(rates, curve, fraction, nodes_max, width_max)
    return kv_footprint(contexts, shape.nodes, kv_target, kv_draft, block_tokens), shape


def gamma_for_budget(
    budget_left: int,
    context: int,
    held_blocks: dict[str, int],
    bytes_per_token: dict[str, int],
    block_tokens: int,
    gamma_max: int,
) -> int | None:
    """The largest γ <= gamma_max whose extra blocks fit in `budget_left`, or None if not even γ = 0.

    Each cache h already holds held_blocks[h]; it needs ⌈(L + γ)/b⌉ at γ, so the extra bytes are
    Σ_h max(0, ⌈(L + γ)/b⌉ − held_h) · b · bytes_per_token[h], nondecreasing in γ.
    """
    best = None
    for gamma in range(gamma_max + 1):
        need = blocks_for(kv_tokens(context, gamma), block_tokens)
        extra = sum(max(0, need - held_blocks.get(h, 0)) * block_tokens * bpt for h, bpt in bytes_per_token.items())
        if extra > budget_left:
            break
        best = gamma
    return best
