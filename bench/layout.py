"""What the engine's batching layout costs: the per-forward gather copy, and the KV bytes it saves.

    python bench/layout.py --batch 8 --contexts 100,800 --gamma 4 --threads 1 --reps 5
    python bench/layout.py --quick

Backs the decision "Engine batching layout" in docs/decisions.md. The engine keeps one
`BlockKVCache` per session and, for each batched forward, `GatherCache` copies every row into a
transient right-padded `[B, kv_heads, max_len, head_dim]` tensor per layer. The alternative is
one shared padded cache per batch. This measures, on a random-weight model of Qwen2.5-0.5B's
shape (no download), fp32, CPU:

1. time: one verify forward of γ+1 tokens for B sessions (the engine's batched forward,
   `forward_rows`' batched branch) against the time spent inside it in `GatherLayer.update`
   (each row's in-place write of its γ+1 new tokens, then the padded copy), and against the
   gather copy alone (every layer's update with no new tokens, on the same caches right after
   the forward, so at the forward's widths; warm, so a lower bound);
2. memory: bytes the B block caches hold (their storage, read back) against one shared padded
   cache for the same rows, B x (blocks of the longest row) at the same block size.

Contexts are B evenly spaced lengths from the --contexts range. The caches are filled with
random K/V through `BlockLayer.write` (no prefill: values do not change the cost) and sized for
L + γ + 1 tokens first, as the memory manager grants them, so no forward reallocates.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
from transformers import Qwen2Config

from specmemo.actors.engine.batch import cache_kwarg
from specmemo.actors.engine.blocks import blocks_for, kv_shape
from specmemo.actors.engine.kvcache import BlockKVCache, GatherCache, GatherLayer, batch_inputs
from specmemo.actors.engine.tiny import tiny_model

MIB = 1 << 20


def qwen25_05b_config(layers: int = 24, vocab_size: int = 151936) -> Qwen2Config:
    """Qwen2.5-0.5B's shape (config.json of Qwen/Qwen2.5-0.5B); --quick cuts layers and vocabulary."""
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=layers,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )


def spread(low: int, high: int, batch: int) -> list[int]:
    """`batch` context lengths evenly spaced from low to high (both ends included)."""
    return [int(round(x)) for x in np.linspace(low, high, batch)]


@dataclass(frozen=True)
class Memory:
    ours: int  # bytes held by the per-session block caches
    padded: int  # bytes one shared [B, kv_heads, slots, head_dim] cache would hold


def padded_bytes(config, lengths: list[int], block_tokens: int, element_size: int) -> int:
    """One shared cache: every row gets the longest row's blocks (same block size, K and V, all layers)."""
    layers, kv_heads, head_dim = kv_shape(config)
    slots = blocks_for(max(lengths), block_tokens) * block_tokens
    return len(lengths) * 2 * layers * kv_heads * head_dim * element_size * slots


def filled_caches(config, contexts: list[int], room: int, block_tokens: int, seed: int = 0) -> list[BlockKVCache]:
    """One block cache per context, holding random K/V for it, sized for `room` more tokens."""
    layers, kv_heads, head_dim = kv_shape(config)
    gen = torch.Generator().manual_seed(seed)
    caches = []
    for length in contexts:
        cache = BlockKVCache(config, block_tokens)
        cache.resize(blocks_for(length + room, block_tokens))
        for layer in cache.layers:
            kv = torch.randn((2, 1, kv_heads, length, head_dim), generator=gen)
            layer.write(kv[0], kv[1])
        caches.append(cache)
    return caches


def memory(config, contexts: list[int], gamma: int, block_tokens: int) -> Memory:
    """KV bytes of both layouts once every row holds its context plus the γ+1 verified slots."""
    caches = filled_caches(config, [c + gamma + 1 for c in contexts], 0, block_tokens)
    ours = sum(c.held_bytes() for c in caches)
    return Memory(ours, padded_bytes(config, [c.length for c in caches], block_tokens, 4))


class TimedGatherLayer(GatherLayer):
    """A `GatherLayer` that adds the seconds of each update (row writes + padded copy) to a counter."""

    def __init__(self, rows, n_new, clock: list[float]):
        super().__init__(rows, n_new)
        self.clock = clock

    def update(self, key_states, value_states, *args, **kwargs):
        start = time.perf_counter()
        out = super().update(key_states, value_states, *args, **kwargs)
        self.clock[0] += time.perf_counter() - start
        return out


class TimedGatherCache(GatherCache):
    """`GatherCache` with timed layers; `clock[0]` is the seconds spent in their updates."""

    def __init__(self, caches: list[BlockKVCache], n_new: list[int]):
        super().__init__(caches, n_new)
        self.clock = [0.0]
        self.layers = [TimedGatherLayer(layer.rows, layer.n_new, self.clock) for layer in self.layers]


def verify_forward(model, caches: list[BlockKVCache], feeds: list[np.ndarray]) -> tuple[torch.Tensor, float]:
    """`forward_rows`' batched branch (equal feed widths, every logit kept) with a `TimedGatherCache`:
    answers the logits `[B, q, V]` and the seconds spent in the cache updates."""
    q = len(feeds[0])
    assert len(caches) > 1 and all(len(f) == q for f in feeds)
    positions, mask = batch_inputs(
        [c.length for c in caches], [q] * len(caches), q, model.config._attn_implementation, torch.float32
    )
    cache = TimedGatherCache(caches, [q] * len(caches))
    with torch.inference_mode():
        logits = model(
            input_ids=torch.from_numpy(np.stack(feeds)),
            position_ids=positions,
            attention_mask=mask,
            **{cache_kwarg(model): cache},
            use_cache=True,
            logits_to_keep=q,
        ).logits
    return logits, cache.clock[0]


def gather_seconds(caches: list[BlockKVCache]) -> float:
    """The engine's gather copy alone: every layer's `GatherLayer.update` with no new tokens."""
    gather = GatherCache(caches, [0] * len(caches))
    first = caches[0].layers[0]
    dummy = first.keys.new_zeros((len(caches), first.keys.shape[1], 1, first.keys.shape[-1]))
    start = time.perf_counter()
    with torch.inference_mode():
        for layer in gather.layers:
            layer.update(dummy, dummy)
    return time.perf_counter() - start


def timing(model, contexts, gamma: int, block_tokens: int, reps: int) -> list[tuple[float, float, float]]:
    """(verify forward s, its cache updates s, gather copy alone s) per rep; a warm-up rep is dropped."""
    caches = filled_caches(model.config, contexts, gamma + 1, block_tokens)
    gen = np.random.default_rng(0)
    feeds_width = gamma + 1
    out = []
    for rep in range(reps + 1):
        feeds = [gen.integers(0, model.config.vocab_size, feeds_width) for _ in caches]
        start = time.perf_counter()
        _, inside = verify_forward(model, caches, feeds)
        forward = time.perf_counter() - start
        alone = gather_seconds(caches)
        for cache in caches:
            cache.rollback(feeds_width, blocks=cache.blocks)
        if rep:
            out.append((forward, inside, alone))
    return out


def table(config, contexts, gamma, block_tokens, times, mem: Memory) -> str:
    forwards = [f for f, _, _ in times]
    inside = [i for _, i, _ in times]
    alone = [a for _, _, a in times]

    def span(xs, scale, fmt):
        return (
            f"{fmt.format(statistics.median(xs) * scale)} ({fmt.format(min(xs) * scale)}-{fmt.format(max(xs) * scale)})"
        )

    lines = [
        f"B={len(contexts)}, contexts {contexts}, γ={gamma}, block {block_tokens} tokens, "
        f"{config.num_hidden_layers} layers, fp32, {torch.get_num_threads()} thread(s), {len(times)} reps",
        "",
        "| measure | value: median (min-max) |",
        "|---|---|",
        f"| verify forward of γ+1 tokens | {span(forwards, 1, '{:.3f}')} s |",
        f"| in it: cache updates (writes + gather copy, all layers) | {span(inside, 1000, '{:.1f}')} ms |",
        f"| cache updates / forward | {span([i / f for f, i, _ in times], 100, '{:.1f}')} % |",
        f"| gather copy alone, warm (all layers) | {span(alone, 1000, '{:.1f}')} ms |",
        f"| gather alone / forward | {span([a / f for f, _, a in times], 100, '{:.1f}')} % |",
        f"| KV held, per-session block caches | {mem.ours / MIB:.1f} MiB |",
        f"| KV held, one shared padded cache | {mem.padded / MIB:.1f} MiB |",
        f"| padded / ours | {mem.padded / mem.ours:.2f}x |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--contexts", default="100,800", help="low,high context lengths")
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--block-tokens", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="4 layers, 32k vocabulary, 2 reps (under a minute)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    low, high = (int(x) for x in args.contexts.split(","))
    contexts = spread(low, high, args.batch)
    config = qwen25_05b_config(4, 32768) if args.quick else qwen25_05b_config()
    reps = min(args.reps, 2) if args.quick else args.reps
    model = tiny_model(config)
    times = timing(model, contexts, args.gamma, args.block_tokens, reps)
    mem = memory(config, contexts, args.gamma, args.block_tokens)
    print(table(config, contexts, args.gamma, args.block_tokens, times, mem))


if __name__ == "__main__":
    main()
