"""The lean one-sequence forward computes, bit for bit, what the model's own forward computes, on
both supported families, in every precision, over a sequence of feeds into one block cache."""

import numpy as np
import pytest
import torch
from engine_helpers import one_torch_thread  # noqa: F401
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specmemo.actors.engine import lean
from specmemo.actors.engine.kvcache import CacheHolder, TreeFeed, batch_inputs
from specmemo.actors.engine.precision import apply_precision, compute_dtype
from specmemo.actors.engine.tiny import tiny_pair


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arch=st.sampled_from(["qwen2", "llama"]),
    precision=st.sampled_from(["float32", "bfloat16", "int8", "int4"]),
    role=st.sampled_from(["target", "draft"]),
    feeds=st.lists(st.integers(1, 9), min_size=1, max_size=5),
    keep=st.integers(1, 9),
    seed=st.integers(0, 1000),
)
def test_the_lean_forward_equals_the_models_own(arch, precision, role, feeds, keep, seed):
    _, model = tiny_pair(seed=seed, arch=arch, layers=2)
    apply_precision(model, precision, role=role)  # a draft attends with sdpa, a target row by row
    assert lean.supports(model)
    holder = CacheHolder(model, block_tokens=4, spare_blocks=1)
    own, mine = holder.new_cache(), holder.new_cache()
    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        for q in feeds:
            ids = torch.randint(0, model.config.vocab_size, (1, q), generator=generator)
            for cache in (own, mine):
                cache.resize(-(-(cache.length + q) // 4))
            k = min(keep, q)
            expected = model(input_ids=ids, cache=own, use_cache=True, logits_to_keep=k).logits
            assert torch.equal(lean.forward(model, ids, mine, k), expected)
    assert own.length == mine.length == sum(feeds)
    for a, b in zip(own.layers, mine.layers):
        assert torch.equal(a.keys[:, :, : a.length], b.keys[:, :, : b.length])


def test_other_models_take_their_own_forward():
    _, model = tiny_pair(seed=1)
    model.train()
    assert not lean.supports(model)  # training mode: dropout and friends
    model.eval()
    model.hf_device_map = {"model.layers.0": "cpu", "model.layers.1": "cuda:1"}
    assert not lean.supports(model) and not lean.supports(model, exact=False)  # spread: hooks move tensors
    del model.hf_device_map
    model.config.use_sliding_window = True
    assert not lean.supports(model)

    class Other(torch.nn.Module):
        pass

    assert not lean.supports(Other())


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_both_families_are_supported(arch):
    _, model = tiny_pair(seed=2, arch=arch)
    assert lean.supports(model)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arch=st.sampled_from(["qwen2", "llama"]),
    precision=st.sampled_from(["float32", "int8", "int4"]),
    feeds=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    seed=st.integers(0, 1000),
)
def test_the_draft_path_is_nearly_the_models_own(arch, precision, feeds, seed):
    # a draft's numbers decide only what the target accepts: close, not equal (fused norms, sdpa)
    _, model = tiny_pair(seed=seed, arch=arch, layers=2)
    apply_precision(model, precision, role="draft")
    holder = CacheHolder(model, block_tokens=4, spare_blocks=1, exact=False)
    own, mine = holder.new_cache(), holder.new_cache()
    generator = torch.Generator().manual_seed(seed)
    tolerance = 1e-4 if precision == "float32" else 0.1  # a flipped activation code moves a quantized row
    with torch.inference_mode():
        for q in feeds:
            ids = torch.randint(0, model.config.vocab_size, (1, q), generator=generator)
            for cache in (own, mine):
                cache.resize(-(-(cache.length + q) // 4))
            expected = model(input_ids=ids, cache=own, use_cache=True, logits_to_keep=q).logits
            got = lean.forward(model, ids, mine, q, exact=False)
            assert got.shape == expected.shape
            assert (got - expected).abs().max() <= tolerance * expected.abs().max()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arch=st.sampled_from(["qwen2", "llama"]),
    feeds=st.lists(st.integers(1, 8), min_size=1, max_size=4),
    seed=st.integers(0, 1000),
)
def test_a_4_bit_draft_runs_its_layers_natively_one_row_as_in_a_batch(arch, feeds, seed):
    """A 4-bit draft's decoder layers run in one C call (native/decode_step.c): feeding m tokens at
    once computes, bit for bit, what m feeds of one token compute (the linears are per-row exact,
    attention runs each row alone), and it is close to the torch path of the same draft."""
    _, model = tiny_pair(seed=seed, arch=arch, layers=2)
    apply_precision(model, "int4", role="draft")
    assert lean._native_stack(model) is not None
    holder = CacheHolder(model, block_tokens=4, spare_blocks=1, exact=False)
    batched, single, reference = holder.new_cache(), holder.new_cache(), holder.new_cache()
    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        for q in feeds:
            ids = torch.randint(0, model.config.vocab_size, (1, q), generator=generator)
            together = lean.forward(model, ids, batched, q, exact=False)
            alone = torch.cat([lean.forward(model, ids[:, j : j + 1], single, 1, exact=False) for j in range(q)], 1)
            assert torch.equal(together, alone)
            expected = model(input_ids=ids, cache=reference, use_cache=True, logits_to_keep=q).logits
            assert (together - expected).abs().max() <= 0.1 * expected.abs().max()
    assert batched.length == single.length == reference.length == sum(feeds)
    for a, b in zip(batched.layers, single.layers):
        assert torch.equal(a.keys[:, :, : a.length], b.keys[:, :, : b.length])
        assert torch.equal(a.values[:, :, : a.length], b.values[:, :, : b.length])


def test_the_native_step_refuses_a_cache_without_room():
    from specmemo.native.errors import NativeError

    _, model = tiny_pair(seed=3, layers=2)
    apply_precision(model, "int4", role="draft")
    stack = lean._native_stack(model)
    cache = CacheHolder(model, block_tokens=4, spare_blocks=1, exact=False).new_cache()
    cache.resize(1)  # room for 4 tokens
    h = torch.zeros(1, 5, model.config.hidden_size)
    cos = sin = torch.zeros(1, 5, stack.shape.dim)
    rows = [(layer.keys.data_ptr(), layer.values.data_ptr(), layer.capacity) for layer in cache.layers]
    with pytest.raises(NativeError, match="invalid"):
        stack.step(h.data_ptr(), 5, 0, cos.data_ptr(), sin.data_ptr(), rows, 1)
    with pytest.raises(NativeError, match="invalid"):  # more rows than one call takes
        stack.step(h.data_ptr(), stack.MAX_ROWS + 1, 0, cos.data_ptr(), sin.data_ptr(), rows, 1)
    with pytest.raises(ValueError, match="cache layers"):
        stack.step(h.data_ptr(), 1, 0, cos.data_ptr(), sin.data_ptr(), rows[:1], 1)


def _random_tree(rng, n: int, base: int) -> tuple[np.ndarray, np.ndarray, "TreeFeed"]:
    # n nodes, node i's parent a random earlier node (or the root): parents, depths, and the feed
    parents = np.array([int(rng.integers(-1, i)) for i in range(n)], dtype=np.int64)
    depth = np.zeros(n, dtype=np.int64)
    visible = np.zeros((n, n), dtype=bool)
    for i in range(n):
        node = i
        while node >= 0:
            visible[i, node] = True
            depth[i] += 1
            node = parents[node]
    return parents, depth, TreeFeed(base, visible, base - 1 + depth)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arch=st.sampled_from(["qwen2", "llama"]),
    precision=st.sampled_from(["float32", "bfloat16", "int8", "int4"]),
    prefix=st.integers(1, 12),
    nodes=st.integers(1, 9),
    seed=st.integers(0, 1000),
)
def test_a_tree_feed_through_the_lean_forward_equals_the_models_own(arch, precision, prefix, nodes, seed):
    """A verification tree runs the lean forward: its positions and tree mask give, bit for bit, the
    logits and cache the model's own forward gives with the same position ids and mask."""
    _, model = tiny_pair(seed=seed, arch=arch, layers=2)
    apply_precision(model, precision, role="target")
    holder = CacheHolder(model, block_tokens=4, spare_blocks=1)
    own, mine = holder.new_cache(), holder.new_cache()
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    with torch.inference_mode():
        ids = torch.randint(0, model.config.vocab_size, (1, prefix), generator=generator)
        for cache in (own, mine):
            cache.resize(-(-(prefix + nodes + 1) // 4))
            lean.forward(model, ids, cache, 1)
        # the pending token (a sequence step at slot prefix) then the nodes: the engine's feed
        _, _, tree = _random_tree(rng, nodes, prefix + 1)
        visible = np.zeros((nodes + 1, nodes + 1), bool)
        visible[:, 0] = True
        visible[1:, 1:] = tree.visible
        whole = TreeFeed(prefix, visible, np.concatenate([[prefix], tree.positions]))
        ids = torch.randint(0, model.config.vocab_size, (1, nodes + 1), generator=generator)
        positions, mask = batch_inputs(
            [prefix], [nodes + 1], nodes + 1, model.config._attn_implementation, compute_dtype(model), [whole]
        )
        expected = model(
            input_ids=ids,
            position_ids=positions,
            attention_mask=mask,
            cache=own,
            use_cache=True,
            logits_to_keep=nodes + 1,
        ).logits
        assert torch.equal(lean.forward(model, ids, mine, nodes + 1, tree=whole), expected)
    for a, b in zip(own.layers, mine.layers):
        assert torch.equal(a.keys[:, :, : a.length], b.keys[:, :, : b.length])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arch=st.sampled_from(["qwen2", "llama"]),
    precision=st.sampled_from(["float32", "int4"]),
    prefix=st.integers(1, 12),
    nodes=st.integers(1, 8),
    seed=st.integers(0, 1000),
)
def test_a_draft_tree_node_computes_what_a_decode_of_its_path_computes(arch, precision, prefix, nodes, seed):
    """Each node of a tree fed to the draft in one forward (natively for a 4-bit draft) gets what
    feeding its path alone, one token at a time, gets: it sees the prefix and its ancestors only."""
    _, model = tiny_pair(seed=seed, arch=arch, layers=2)
    apply_precision(model, precision, role="draft")
    holder = CacheHolder(model, block_tokens=4, spare_blocks=1, exact=False)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (1, prefix), generator=generator)
    tokens = torch.randint(0, model.config.vocab_size, (1, nodes), generator=generator)
    parents, _, tree = _random_tree(rng, nodes, prefix)
    with torch.inference_mode():
        cache = holder.new_cache()
        cache.resize(-(-(prefix + nodes) // 4))
        lean.forward(model, ids, cache, 1, exact=False)
        together = lean.forward(model, tokens, cache, nodes, exact=False, tree=tree)[0]
        for i in range(nodes):
            path, node = [], i
            while node >= 0:
                path.append(node)
                node = parents[node]
            alone = holder.new_cache()
            alone.resize(-(-(prefix + nodes) // 4))
            lean.forward(model, ids, alone, 1, exact=False)
            for node in reversed(path):
                last = lean.forward(model, tokens[:, node : node + 1], alone, 1, exact=False)[0, -1]
            tolerance = 0.0 if precision == "int4" else 1e-4  # the native step computes rows alone
            assert (together[i] - last).abs().max() <= tolerance * last.abs().max()
