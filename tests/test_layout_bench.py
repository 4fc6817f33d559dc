"""The batching-layout benchmark's helpers: its memory comparison (deterministic) and its timed
forward, which must be the engine's batched forward (its timings are never asserted)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import load_bench

from specmemo.actors.engine.batch import forward_rows
from specmemo.actors.engine.tiny import tiny_config, tiny_model


@pytest.fixture(scope="module")
def bench():
    return load_bench("layout")


def test_contexts_are_evenly_spread_with_both_ends(bench):
    assert bench.spread(100, 800, 8) == [100, 200, 300, 400, 500, 600, 700, 800]
    assert bench.spread(10, 20, 1) == [10]


def test_memory_of_both_layouts_at_the_documented_shape(bench):
    # Qwen2.5-0.5B: 24 layers x 2 kv heads x 64 dims, fp32 = 24 KiB of K+V per token.
    # Rows hold 105..805 tokens in 16-token blocks: 7+13+20+26+32+38+45+51 = 232 blocks,
    # against 8 x 51 for one padded cache.
    config = bench.qwen25_05b_config(layers=24, vocab_size=64)
    mem = bench.memory(config, bench.spread(100, 800, 8), gamma=4, block_tokens=16)
    per_block = 24 * 1024 * 16
    assert mem.ours == 232 * per_block and mem.padded == 8 * 51 * per_block
    assert (round(mem.ours / 2**20), round(mem.padded / 2**20), round(mem.padded / mem.ours, 2)) == (87, 153, 1.76)


def test_equal_contexts_make_both_layouts_equal(bench):
    config = tiny_config()
    mem = bench.memory(config, [30, 30, 30], gamma=2, block_tokens=8)
    assert mem.ours == mem.padded > 0


def test_timed_forward_is_the_engines_batched_forward(bench):
    model = tiny_model(tiny_config())
    contexts, feeds = [5, 17, 9], [np.array([1, 2, 3]), np.array([4, 5, 6]), np.array([7, 8, 9])]
    ours = bench.filled_caches(model.config, contexts, 3, block_tokens=4)
    theirs = bench.filled_caches(model.config, contexts, 3, block_tokens=4)
    logits, seconds = bench.verify_forward(model, ours, feeds)
    expected = forward_rows(model, theirs, feeds, [3, 3, 3])
    for b in range(3):
        torch.testing.assert_close(logits[b], expected[b])
    assert seconds > 0 and [c.length for c in ours] == [c.length for c in theirs] == [8, 20, 12]
    assert bench.gather_seconds(ours) > 0
