"""The memory footprint of speculative decoding, its expected speedup, and the lower-bound budget.

Notation (docs/memory-model.md): α acceptance rate of one draft token, c = t_draft / t_target,
γ draft tokens per step, b tokens per block, L_i the committed context of session i (prompt and
generated tokens so far), kv_t / kv_d bytes per token of the target / draft KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def speedup(alpha: float, gamma: int, cost_ratio: float) -> float:
    # S(γ) = E(γ) / (γ·c + 1)
    return expected_tokens(alpha, gamma) / (gamma * cost_ratio + 1.0)


class CostCurve:
    """Measured step costs: t_d seconds per draft token and t_t(M) seconds per target forward of M
    new tokens, M = 1..γ_max+1. On a CPU t_t is far from flat in M for some precisions (float32
    switches from GEMV to GEMM at M = 2) and nearly flat for others (int8 to M ≈ 9), which moves γ*.

    Each observation updates an exponential average (weight 0.2) of its own M; t_t at an M never
    observed is interpolated linearly between the nearest observed Ms, and beyond the last
    observed M extrapolated with the slope of the last two (flat with one). Without any target
    observation, t_t(M) = 1 and t_d = c: the single-ratio model S(γ) = E(γ)/(γc + 1).
    """

    def __init__(self, cost_ratio: float = 0.1):
        self.prior_ratio = cost_ratio
        self.measured_draft_s: float | None = None
        self.target_s: dict[int, float] = {}

    def observe(self, draft_s: float | None = None, m: int | None = None, target_s: float | None = None,
                weight: float = 0.2) -> None:
        if draft_s is not None and draft_s >= 0:
            old = self.measured_draft_s
            self.measured_draft_s = draft_s if old is None else (1 - weight) * old + weight * draft_s
        if m is not None and target_s is not None and target_s > 0 and m >= 1:
            old = self.target_s.get(m)
            self.target_s[m] = target_s if old is None else (1 - weight) * old + weight * target_s

    def target(self, m: int) -> float:
        if not self.target_s:
            return 1.0
        known = sorted(self.target_s)
        if m in self.target_s:
            return self.target_s[m]
        lower = [k for k in known if k < m]
        upper = [k for k in known if k > m]
        if lower and upper:
            a, b = lower[-1], upper[0]
            return self.target_s[a] + (self.target_s[b] - self.target_s[a]) * (m - a) / (b - a)
        if upper:
            return self.target_s[upper[0]]
        if len(known) == 1:
            return self.target_s[known[0]]
        a, b = known[-2], known[-1]
        slope = (self.target_s[b] - self.target_s[a]) / (b - a)
        return max(self.target_s[b] + slope * (m - b), 1e-9)

    @property
    def draft_s(self) -> float:
        """t_d: as measured, else the prior c times t_t(1) (in the target's units)."""
        return self.measured_draft_s if self.measured_draft_s is not None else self.prior_ratio * self.target(1)

    @property
    def ratio(self) -> float:
        """c = t_d / t_t(1)."""
        return self.draft_s / self.target(1)

    def step_seconds(self, gamma: int) -> float:
        # γ draft tokens then one target forward of γ + 1 tokens
        return gamma * self.draft_s + self.target(gamma + 1)

    def as_dict(self) -> dict:
        return {"draft_s": self.draft_s, "target_s": {str(m): t for m, t in sorted(self.target_s.items())}}


def curve_speedup(alpha: float, gamma: int, curve: CostCurve) -> float:
    # S(γ) = E(γ) · t_t(1) / (γ·t_d + t_t(γ + 1)): tokens per second against one-token decoding
    return expected_tokens(alpha, gamma) * curve.target(1) / curve.step_seconds(gamma)


def gamma_star(alpha: float, cost_ratio: "float | CostCurve", fraction: float = 0.96, gamma_max: int = 16) -> int:
    """The smallest γ in [0, gamma_max] with S(γ) >= fraction · max S (a single c, or a `CostCurve`)."""
    curve = cost_ratio if isinstance(cost_ratio, CostCurve) else CostCurve(cost_ratio)
    speeds = [curve_speedup(alpha, g, curve) for g in range(gamma_max + 1)]
    best = max(speeds)
    return next(g for g, s in enumerate(speeds) if s >= fraction * best)


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
    cost_ratio: "float | CostCurve",
    kv_target: int,
    kv_draft: int,
    block_tokens: int,
    fraction: float = 0.96,
    gamma_max: int = 16,
) -> tuple[int, int]:
    """(KV bytes, γ*): the smallest KV budget that keeps `fraction` of the best expected speedup."""
    g = gamma_star(alpha, cost_ratio, fraction, gamma_max)
    return kv_footprint(contexts, g, kv_target, kv_draft, block_tokens), g


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
