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


def gamma_star(alpha: float, cost_ratio: float, fraction: float = 0.96, gamma_max: int = 16) -> int:
    """The smallest γ in [0, gamma_max] with S(γ) >= fraction · max S."""
    speeds = [speedup(alpha, g, cost_ratio) for g in range(gamma_max + 1)]
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
    cost_ratio: float,
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
