"""Greedy speculative decoding equals the target's own greedy decoding, token for token."""

import numpy as np
import torch
from engine_helpers import assert_accounting_matches_tensors, greedy_reference, one_torch_thread  # noqa: F401
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specmemo.actors.engine import Engine
from specmemo.actors.engine.tiny import tiny_pair

prompt_st = st.lists(st.integers(0, 258), min_size=1, max_size=20)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    arch=st.sampled_from(["qwen2", "llama"]),
    noise=st.sampled_from([0.0, 0.02, 0.5]),
    draft_layers=st.integers(1, 2),
    block=st.integers(1, 8),
    gamma=st.one_of(st.none(), st.integers(0, 6)),
    widths=st.lists(st.integers(1, 4), min_size=3, max_size=3),
    forwards=st.lists(st.one_of(st.none(), st.integers(0, 6)), min_size=3, max_size=3),
    prompts=st.lists(prompt_st, min_size=1, max_size=3),
    join_at=st.lists(st.integers(0, 3), min_size=3, max_size=3),
    max_new=st.integers(1, 12),
    slack=st.floats(1.0, 3.0),
    lookups=st.lists(st.sampled_from([0, 0, 2, 8]), min_size=3, max_size=3),
)
def test_greedy_speculative_output_equals_target_greedy_for_any_models_trees_budgets_and_batches(
    seed, arch, noise, draft_layers, block, gamma, widths, forwards, prompts, join_at, max_new, slack, lookups
):
    # each session drafts its own tree (width 1: a chain) of a fixed or a chosen node count, in
    # the forwards the memory side chooses or at most forwards[i] (the rest of its nodes leaves),
    # with a lookup tail of up to lookups[i] tokens where the context offers one
    draft, target = tiny_pair(seed=seed, arch=arch, noise=noise, draft_layers=draft_layers)
    probe = Engine(draft, target, budget_bytes=1 << 40, block_tokens=block)
    per_token = probe.draft.bytes_per_token + probe.verifier.bytes_per_token
    need = sum((-(-(len(p) + max_new) // block) + 1) * block * per_token for p in prompts)
    engine = Engine(draft, target, budget_bytes=int(need * slack), block_tokens=block, gamma=gamma, tree=4)
    out = {i: [] for i in range(len(prompts))}
    last_join = max(join_at[: len(prompts)])
    step = 0
    while step <= last_join or engine.driver.active:
        for i, p in enumerate(prompts):
            if join_at[i] == step:
                sid = str(i)
                engine.verifier.open(sid)
                ids, keep = engine.verifier.check_prompt(sid, p)
                engine.driver.join(
                    sid, ids, keep, max_new, gamma=gamma, width=widths[i], forwards=forwards[i], lookup=lookups[i]
                )
        for event in engine.driver.step():
            assert event.error is None
            out[int(event.session)] += event.tokens.tolist()
        assert_accounting_matches_tensors(engine)
        step += 1
    for i, p in enumerate(prompts):
        assert out[i] == greedy_reference(target, p, max_new).tolist()


def test_a_draft_that_always_agrees_emits_gamma_plus_one_tokens_per_step():
    draft, target = tiny_pair(seed=5, noise=0.0, draft_layers=2)
    engine = Engine(draft, target, block_tokens=4, gamma=4)
    ids, stats = engine.generate_ids(np.arange(3, 9), max_new_tokens=25)
    assert ids.tolist() == greedy_reference(target, np.arange(3, 9), 25).tolist()
    assert stats["accepted_per_step"] == [4] * 5 and stats["alpha"] == 1.0


def test_a_batch_of_sessions_matches_each_session_alone():
    draft, target = tiny_pair(seed=8, noise=0.05, draft_layers=2)
    engine = Engine(draft, target, block_tokens=8, gamma=3)
    prompts = [np.arange(1, 4), np.arange(30, 60), np.array([7])]
    batch = engine.generate_batch(prompts, max_new_tokens=15)
    for p, (ids, _) in zip(prompts, batch):
        assert ids.tolist() == engine.generate_ids(p, 15)[0].tolist() == greedy_reference(target, p, 15).tolist()
    assert engine.usage()["live"] == 0


def test_generation_stops_at_the_model_context():
    draft, target = tiny_pair(seed=2, max_positions=24)
    engine = Engine(draft, target, block_tokens=4, gamma=3)
    ids, _ = engine.generate_ids(np.arange(20), max_new_tokens=50)
    assert len(ids) == 4
    with torch.no_grad():
        assert ids.tolist() == greedy_reference(target, np.arange(20), 4).tolist()


def test_a_greedy_session_batched_with_sampled_ones_still_decodes_greedily():
    draft, target = tiny_pair(seed=13, noise=0.05, draft_layers=2)
    engine = Engine(draft, target, block_tokens=4, gamma=3, budget_bytes=1 << 30)
    prompts = {"greedy": np.arange(2, 12), "hot": np.arange(5, 9), "warm": np.arange(40, 43)}
    for (sid, prompt), temperature in zip(prompts.items(), [0.0, 1.5, 0.7]):
        engine.verifier.open(sid)
        ids, keep = engine.verifier.check_prompt(sid, prompt)
        engine.driver.join(sid, ids, keep, 14, temperature=temperature, seed=1)
    out = {sid: [] for sid in prompts}
    while engine.driver.active:
        for event in engine.driver.step():
            out[event.session] += event.tokens.tolist()
    assert out["greedy"] == greedy_reference(target, prompts["greedy"], 14).tolist()
    assert len(out["hot"]) == len(out["warm"]) == 14


def test_a_static_whole_context_cache_is_one_block_that_never_shrinks():
    draft, target = tiny_pair(seed=9, noise=0.05, draft_layers=2, max_positions=64)
    engine = Engine(draft, target, block_tokens=64, gamma=3)
    engine.verifier.open("s")
    ids, keep = engine.verifier.check_prompt("s", np.arange(5, 15))
    engine.driver.join("s", ids, keep, 20)
    per_token = engine.draft.bytes_per_token + engine.verifier.bytes_per_token
    out = []
    while engine.driver.active:
        out += engine.driver.step()[0].tokens.tolist()
        assert engine.usage()["live"] == 64 * per_token
    assert_accounting_matches_tensors(engine)
    assert out == greedy_reference(target, np.arange(5, 15), 20).tolist()


def test_generation_at_the_lower_bound_budget_keeps_its_gamma_and_output():
    draft, target = tiny_pair(seed=10, noise=0.0, draft_layers=2)
    probe = Engine(draft, target, block_tokens=4)
    prompt, new = np.arange(3, 20), 24
    budget, gamma = probe.kv_lower_bound([len(prompt) + new], alpha=0.8, cost_ratio=0.05)
    assert gamma == 6
    engine = Engine(draft, target, budget_bytes=budget, block_tokens=4, gamma=gamma)
    ids, stats = engine.generate_ids(prompt, new)
    assert ids.tolist() == greedy_reference(target, prompt, new).tolist()
    assert engine.memory.usage()["peak"] <= budget
    steps = stats["accepted_per_step"]
    assert steps[:-1] == [gamma] * (len(steps) - 1)  # never forced below γ* (the last step is cut by max_new)
