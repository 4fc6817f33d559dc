"""Block KV caches: same logits as transformers' DynamicCache, bytes held equal to the blocks."""

import numpy as np
import pytest
import torch
from engine_helpers import one_torch_thread  # noqa: F401
from transformers import DynamicCache

from specmemo.actors.engine.batch import cache_kwarg, forward_rows
from specmemo.actors.engine.kvcache import BlockKVCache, blocks_after_rollback
from specmemo.actors.engine.memory_model import kv_bytes_per_token
from specmemo.actors.engine.tiny import tiny_config, tiny_model


@pytest.fixture(scope="module", params=[("qwen2", "sdpa"), ("llama", "eager")])
def model(request):
    arch, attn = request.param
    m = tiny_model(tiny_config(arch=arch), seed=3)
    m.config._attn_implementation = attn
    return m


def _ids(n, seed=0):
    return torch.randint(0, 259, (1, n), generator=torch.Generator().manual_seed(seed))


def test_block_cache_gives_the_logits_of_a_dynamic_cache(model):
    ids = _ids(23)
    block, dynamic = BlockKVCache(model.config, block_tokens=4), DynamicCache()
    with torch.no_grad():
        for lo, hi in [(0, 9), (9, 10), (10, 16), (16, 23)]:
            a = model(ids[:, lo:hi], **{cache_kwarg(model): block}, use_cache=True).logits
            b = model(ids[:, lo:hi], **{cache_kwarg(model): dynamic}, use_cache=True).logits
            assert torch.allclose(a, b, atol=1e-5)
            assert block.get_seq_length() == dynamic.get_seq_length() == hi


def test_bytes_held_equal_blocks_times_block_bytes_at_every_step(model):
    cache = BlockKVCache(model.config, block_tokens=4)
    assert cache.block_bytes == 4 * kv_bytes_per_token(model.config, 4)
    ids = _ids(40, seed=1)
    with torch.no_grad():
        for hi in range(1, 41, 3):
            model(ids[:, max(0, hi - 3) : hi], **{cache_kwarg(model): cache}, use_cache=True)
            assert cache.held_bytes() == cache.blocks * cache.block_bytes
            assert cache.blocks == -(-cache.length // 4)


def test_rollback_across_a_block_boundary_reallocates_down_keeping_one_spare_block(model):
    cache = BlockKVCache(model.config, block_tokens=4)
    with torch.no_grad():
        model(_ids(17), **{cache_kwarg(model): cache}, use_cache=True)
    assert (cache.length, cache.blocks) == (17, 5)
    cache.crop(-2)
    assert (cache.length, cache.blocks) == (15, 5)
    cache.crop(-6)
    assert (cache.length, cache.blocks) == (9, 4)
    assert cache.held_bytes() == 4 * cache.block_bytes
    assert blocks_after_rollback(4, 9, 4) == 4 and blocks_after_rollback(8, 9, 4) == 4


def test_rolled_back_cache_continues_like_a_fresh_one(model):
    ids, other = _ids(20, seed=2), _ids(5, seed=9)
    cache, fresh = BlockKVCache(model.config, block_tokens=4), BlockKVCache(model.config, block_tokens=4)
    with torch.no_grad():
        model(torch.cat([ids[:, :12], other], 1), **{cache_kwarg(model): cache}, use_cache=True)
        cache.crop(-5)
        a = model(ids[:, 12:], **{cache_kwarg(model): cache}, use_cache=True).logits
        b = model(ids, **{cache_kwarg(model): fresh}, use_cache=True).logits[:, 12:]
    assert torch.allclose(a, b, atol=1e-5)


def test_block_cache_works_under_generate(model):
    ids = _ids(7, seed=4)
    cache = BlockKVCache(model.config, block_tokens=4)
    ours = model.generate(ids, max_new_tokens=12, do_sample=False, **{cache_kwarg(model): cache})
    theirs = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert torch.equal(ours, theirs)
    assert cache.length == ids.shape[1] + 11


def test_one_batched_forward_over_ragged_caches_equals_each_row_alone(model):
    seqs = [_ids(n, seed=n)[0].numpy() for n in (3, 19, 8)]
    caches = [BlockKVCache(model.config, block_tokens=4) for _ in seqs]
    for seq, cache in zip(seqs, caches):
        forward_rows(model, [cache], [seq[:-2]], [0])
    feeds = [seqs[0][-2:], seqs[1][-2:-1], seqs[2][-2:]]
    rows = forward_rows(model, caches, feeds, [2, 1, 1])
    with torch.no_grad():
        for seq, feed, row, cache in zip(seqs, feeds, rows, caches):
            full = np.concatenate([seq[:-2], feed])
            ref = model(torch.from_numpy(full)[None]).logits[0, -len(row) :]
            assert torch.allclose(row, ref, atol=1e-5)
            assert cache.length == len(full)
            assert cache.held_bytes() == cache.blocks * cache.block_bytes
