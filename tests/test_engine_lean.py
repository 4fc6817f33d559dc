"""The lean one-sequence forward computes, bit for bit, what the model's own forward computes, on
both supported families, in every precision, over a sequence of feeds into one block cache."""

import pytest
import torch
from engine_helpers import one_torch_thread  # noqa: F401
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specmemo.actors.engine import lean
from specmemo.actors.engine.kvcache import CacheHolder
from specmemo.actors.engine.precision import apply_precision
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
