"""The prefix store: a session that starts with a stored prompt prefix gets, bit for bit, the KV a
prefill computes, speculation stays lossless, and the store stays within the bytes it reserved."""

import numpy as np
import pytest
import torch
from engine_helpers import greedy_reference, one_torch_thread  # noqa: F401
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specmemo.actors.engine import Engine, OverBudget
from specmemo.actors.engine.precision import apply_precision
from specmemo.actors.engine.prefix import PrefixStore
from specmemo.actors.engine.tiny import tiny_pair
from specmemo.actors.engine.verifier import VerifierCore


def _pair(seed=3):
    draft, target = tiny_pair(seed=seed, noise=0.05, draft_layers=2)
    apply_precision(draft, "int4", role="draft")
    apply_precision(target, "int8")  # row-wise attention: every row's bits are its own
    return draft, target


def test_a_restored_prefix_is_the_kv_a_prefill_computes_bit_for_bit():
    _, target = _pair()
    shared = np.arange(10, 31)  # 21 tokens: two whole chunks of 8 are stored
    stored = VerifierCore(target, block_tokens=4, prefix_tokens=64)
    plain = VerifierCore(target, block_tokens=4)
    for core in (stored, plain):
        core.open("a")
        core.prefill("a", np.r_[shared, 40, 41], 0, 8)
    prompt = np.r_[shared, 50, 51, 52]
    for core in (stored, plain):
        core.open("b")
        core.prefill("b", prompt, 0, 8)
    assert stored.prefilled("b") == len(prompt) - 1 - 16 and plain.prefilled("b") == len(prompt) - 1
    mine, theirs = stored._get("b").cache, plain._get("b").cache
    assert mine.get_seq_length() == theirs.get_seq_length() == len(prompt) - 1
    for a, b in zip(mine.layers, theirs.layers):
        assert torch.equal(a.keys[:, :, : a.length], b.keys[:, :, : b.length])
        assert torch.equal(a.values[:, :, : a.length], b.values[:, :, : b.length])


def test_a_chunk_is_found_only_after_the_same_whole_prefix_and_the_least_recent_leave_first():
    _, target = _pair()
    core = VerifierCore(target, block_tokens=4, prefix_tokens=24)  # three chunks of 8
    store = core.prefixes
    assert store.capacity_bytes == 24 * core.bytes_per_token

    def prefill(session, ids):
        core.open(session)
        core.prefill(session, np.asarray(ids), 0, 8)
        return len(ids) - 1 - core.prefilled(session)

    first = list(range(1, 18))  # chunks 1..8 and 9..16 stored
    assert prefill("a", first) == 0 and store.held_tokens() == 16
    assert prefill("b", [99] + first[1:]) == 0  # the same second chunk after another first: not found
    assert store.held_tokens() == 24  # b's two chunks joined; the least recent, a's first, left
    assert prefill("c", first) == 0  # without its first chunk a's prefix is not found
    assert prefill("d", first) == 16  # and is found again once c stored it


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    shared=st.lists(st.integers(0, 258), min_size=0, max_size=20),
    tails=st.lists(st.lists(st.integers(0, 258), min_size=1, max_size=6), min_size=2, max_size=3),
    gamma=st.one_of(st.none(), st.integers(1, 4)),
    max_new=st.integers(1, 8),
)
def test_greedy_output_of_sessions_that_share_a_prefix_equals_the_targets_own(seed, shared, tails, gamma, max_new):
    draft, target = _pair(seed)
    engine = Engine(draft, target, block_tokens=4, gamma=gamma, prefix_tokens=32)
    for tail in tails:
        prompt = shared + tail
        ids, _ = engine.generate_ids(np.array(prompt), max_new, gamma=gamma)
        assert ids.tolist() == greedy_reference(target, prompt, max_new).tolist()
    usage = engine.memory.usage()
    reserved = engine.draft.prefixes.capacity_bytes + engine.verifier.prefixes.capacity_bytes
    assert engine.draft.held_bytes() + engine.verifier.held_bytes() + reserved == usage["live"] <= usage["budget"]
    if len(shared) >= 8:
        assert engine.verifier.prefixes.hits >= 8 * (len(tails) - 1)


def test_the_store_is_reserved_in_the_budget_and_a_budget_without_room_for_it_is_refused():
    draft, target = _pair()
    engine = Engine(draft, target, block_tokens=4, prefix_tokens=32)
    reserved = engine.memory.usage()["reserved"]
    stores = {"draft": engine.draft.prefixes, "target": engine.verifier.prefixes}
    assert reserved == {holder: store.capacity_bytes for holder, store in stores.items()}
    small = 4 * (engine.draft.bytes_per_token + engine.verifier.bytes_per_token)  # one block each
    with pytest.raises(OverBudget):
        Engine(draft, target, budget_bytes=small, block_tokens=4, prefix_tokens=32)
    with pytest.raises(ValueError, match="tokens >= 0"):
        PrefixStore(-1, 8)
