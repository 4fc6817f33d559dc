"""Lookup tails: tokens copied from the context, verified below the draft's path."""

import numpy as np
import pytest
from engine_helpers import assert_accounting_matches_tensors, greedy_reference, one_torch_thread  # noqa: F401
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from test_engine_sampling import VOCAB, _exact_pair_distribution

from specmemo.actors.engine import Engine
from specmemo.actors.engine.lookup import alone_pays, continuation, tail, tail_cap
from specmemo.actors.engine.manager import MemoryManager
from specmemo.actors.engine.memory_model import CostCurve, tail_length
from specmemo.actors.engine.tiny import tiny_pair
from specmemo.actors.engine.tree import Tree, verify_tree


def _reference_continuation(ids: list[int], length: int, n_max: int, n_min: int) -> list[int]:
    # the longest suffix first; its latest earlier start that leaves a token after it
    for n in range(min(n_max, len(ids) - 1), n_min - 1, -1):
        for start in range(len(ids) - n - 1, -1, -1):
            if ids[start : start + n] == ids[len(ids) - n :]:
                return ids[start + n : start + n + length]
    return []


@settings(max_examples=300, deadline=None)
@given(
    ids=st.lists(st.integers(0, 3), max_size=40),
    length=st.integers(0, 6),
    n_min=st.integers(1, 3),
    extra=st.integers(0, 2),
)
def test_continuation_is_what_followed_the_latest_earlier_longest_suffix(ids, length, n_min, extra):
    got = continuation(np.asarray(ids, dtype=np.int64), length, n_min + extra, n_min).tolist()
    assert got == (_reference_continuation(ids, length, n_min + extra, n_min) if length > 0 else [])


def test_a_tail_hangs_below_the_deepest_node_of_the_first_children_path():
    # root -> 0 (a) -> 2 (b); 1 is 0's sibling. The context ends "a b" once before, then "x y z"
    tokens = np.array([10, 11, 12], dtype=np.int64)
    parents = np.array([-1, -1, 0], dtype=np.int64)
    assert Tree.from_rows(tokens, parents, 3).main_path() == [0, 2]
    assert Tree.from_rows(tokens, parents, 0).main_path() == []
    context = np.array([7, 10, 12, 20, 21, 22, 5], dtype=np.int64)
    found, up = tail(context, tokens, [0, 2], 3, 2)
    assert found.tolist() == [20, 21] and up.tolist() == [2, 3]
    found, up = tail(np.array([4, 5, 6, 4, 5], dtype=np.int64), tokens, [], 0, 4)  # no draft: from the root
    assert found.tolist() == [6, 4, 5] and up.tolist() == [-1, 0, 1]


def test_tail_nodes_do_not_count_in_the_rank_rates():
    # a chain of 1 draft node and a tail of 2; the target takes the draft's token and the tail's first
    tree = Tree.chain(np.array([3, 4, 9]))
    logits = np.full((4, 16), -5.0)
    for row, best in enumerate([3, 4, 5, 0]):
        logits[row, best] = 5.0
    verdict = verify_tree(tree, logits, 0.0, counted=1)
    assert verdict.path == [0, 1] and verdict.tokens.tolist() == [3, 4, 5]
    assert verdict.tried == [1] and verdict.hits == [1]  # the draft's one node only
    assert verify_tree(tree, logits, 0.0).tried == [3]  # counted as a chain, the tail would be


def test_tail_length_pays_for_its_rows():
    # E = 2 tokens in 100 ms; rows free: the whole cap; rows dearer than what they bring: none
    assert tail_length(2.0, 0.1, 1.0, 0.9, [0.0] * 5) == 4
    assert tail_length(2.0, 0.1, 1.0, 0.9, [0.0, 0.5, 1.0]) == 0
    assert tail_length(2.0, 0.1, 0.0, 0.9, [0.0, 0.001, 0.002]) == 0  # never reached
    # 5 ms a row at rate 0.5: L = 1 gives 2.5 tokens in 105 ms (23.8/s), L = 2 2.75 in 110 (25.0/s),
    # L = 3 2.875 in 115 (25.0/s: a tie, the shorter wins), L = 4 2.9375 in 120 (24.5/s)
    assert tail_length(2.0, 0.1, 1.0, 0.5, [0.0, 0.005, 0.010, 0.015, 0.020]) == 2


def test_a_commit_may_take_tail_tokens_only_within_the_blocks_granted():
    memory = MemoryManager(1 << 30, block_tokens=4, spare_blocks=0, gamma_max=4)
    memory.add_holder("draft", 8)
    memory.add_holder("target", 8)
    memory.open_session("s")
    memory.prefill("s", 0, 6)
    answer = memory.grant("s", gamma=1)
    assert answer["blocks"] == {"draft": 2, "target": 2}  # 7 slots: context 6 + 1 node, 8 held
    memory.commit("s", accepted=1, emitted=3)  # the node, one tail token, the target's: 8 resident
    memory.grant("s", gamma=1)
    with pytest.raises(AssertionError):
        memory.commit("s", accepted=0, emitted=6)  # 14 tokens, 3 blocks of 4: the tail overflowed


def _repetitive(seed: int, n: int = 24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    motif = rng.integers(3, 259, size=6)
    return np.concatenate([motif] * (n // 6))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 1000),
    noise=st.sampled_from([0.0, 0.02]),
    gamma=st.one_of(st.none(), st.integers(0, 4)),
    width=st.integers(1, 3),
    block=st.integers(2, 8),
    lookup=st.integers(1, 8),
    motifs=st.lists(st.lists(st.integers(3, 258), min_size=1, max_size=5), min_size=1, max_size=2),
    max_new=st.integers(4, 24),
)
def test_greedy_output_with_lookup_tails_is_the_targets_for_any_shapes_blocks_and_batches(
    seed, noise, gamma, width, block, lookup, motifs, max_new
):
    # each prompt is a motif, the target's own continuation of it, and the motif again: the
    # lookup finds the motif earlier and copies what followed, which the target often says again,
    # so tails are proposed, taken and cut short (the main greedy property test's random prompts
    # rarely offer one); a fixed cost ratio leaves tails unpriced (the cap)
    draft, target = tiny_pair(seed=seed, noise=noise, draft_layers=2)
    engine = Engine(draft, target, block_tokens=block, gamma=gamma, tree=width, cost_ratio=0.2, lookup=lookup)
    prompts = [np.array(m + greedy_reference(target, m, 12).tolist() + m, dtype=np.int64) for m in motifs]
    for prompt, (ids, _) in zip(prompts, engine.generate_batch(prompts, max_new)):
        assert ids.tolist() == greedy_reference(target, prompt, max_new).tolist()
    assert_accounting_matches_tensors(engine)


@pytest.mark.parametrize("width", [1, 3])
def test_lookup_tails_are_taken_and_greedy_output_is_the_targets(width):
    # a fixed cost ratio leaves the tails unpriced (the cap), so every match is tried; random tiny
    # models fall into loops, which the lookup finds once the draft's path (the target's own
    # layers here, so its path is right) ends where the loop did before
    looked_up = 0
    for seed in range(3):
        draft, target = tiny_pair(seed=seed, noise=0.0, draft_layers=2)
        engine = Engine(draft, target, block_tokens=4, gamma=2, tree=width, cost_ratio=0.2, lookup=6)
        prompt = _repetitive(seed)
        ids, stats = engine.generate_ids(prompt, 32, session="s")
        assert ids.tolist() == greedy_reference(target, prompt, 32).tolist()
        assert stats["accepted"] <= stats["drafted"]  # the draft's acceptance leaves the tail out
        assert_accounting_matches_tensors(engine)
        looked_up += stats["looked_up"]
    assert looked_up > 0


def test_sampled_output_with_lookup_tails_follows_the_target_distribution_over_two_tokens():
    # the context [3, 5, 3, 5] ends with [3, 5], which occurred before, followed by 3: the first
    # step (γ = 0; the 8-token block has slots past the context, the turn room for one node before
    # its last token) verifies the point mass 3 at the root (accepted with p(3), else a draw from
    # the rest of p), then the target's token
    draft, target = tiny_pair(seed=11, vocab_size=VOCAB, noise=0.3, draft_layers=2)
    engine = Engine(draft, target, budget_bytes=1 << 30, block_tokens=8, gamma=0, cost_ratio=0.2, lookup=4)
    prompt, temperature, runs, batch = [3, 5, 3, 5], 0.8, 2400, 400
    counts, looked_up = np.zeros((VOCAB, VOCAB)), 0
    for first in range(0, runs, batch):
        seeds = list(range(first, first + batch))
        for ids, turn in engine.generate_batch([prompt] * batch, 2, temperature, seeds=seeds):
            counts[ids[0], ids[1]] += 1
            looked_up += turn["looked_up"]
    expected = _exact_pair_distribution(target, prompt, temperature).ravel() * runs
    observed = counts.ravel()
    big = expected >= 5
    observed, expected = np.append(observed[big], observed[~big].sum()), np.append(expected[big], expected[~big].sum())
    assert stats.chisquare(observed, expected).pvalue > 0.001
    assert looked_up > 0
    assert_accounting_matches_tensors(engine)


def test_a_tail_fits_rows_whose_draft_took_fewer_nodes_than_granted():
    # a row granted 4 nodes whose draft ran out of candidates at 2 (a sampled tree's draws, a
    # vocabulary): its tail makes 3 nodes, fewer than the proposal's 4 columns
    draft, target = tiny_pair(seed=1)
    engine = Engine(draft, target, block_tokens=16, cost_ratio=0.2, lookup=4)
    engine.verifier.open("s")
    prompt = np.array([7, 8, 9, 7, 8], dtype=np.int64)
    engine.driver.join("s", prompt, 0, 8, lookup=4)
    turn = engine.driver._turns["s"]
    drafts = np.array([[9, 7, -1, -1]], dtype=np.int64)  # the context then ends 7 8 9 7: 8 9 7 followed by 8
    parents = np.array([[-1, 0, -1, -1]], dtype=np.int64)
    granted = [(turn, 4, 1, {"draft": 1, "target": 1})]
    wide, up, probs, nodes = engine.driver._with_tails(granted, [prompt], [[0, 1]], [2], [1], drafts, parents, None)
    assert nodes == [3] and wide.shape == (1, 4) and probs is None
    assert wide[0, :3].tolist() == [9, 7, 8] and up[0, :3].tolist() == [-1, 0, 1]


def test_a_copied_continuation_replaces_the_draft_only_where_it_pays():
    flat = CostCurve.from_anchors({1: 0.05, 9: 0.05})  # rows free to M = 9
    steep = CostCurve.from_anchors({1: 0.05, 2: 0.10, 9: 0.45})
    sure, unsure = [18, 18], [18, 0]  # a turn's tail counts: [tried, accepted]
    # 3 draft nodes at α 0.6 in 30 ms of draft forwards: 1 + .6 + .36 + .216 = 2.18 tokens in 80 ms
    assert alone_pays(flat, 8, 0.6, 3, 0.030, sure)
    assert not alone_pays(flat, 8, 0.6, 3, 0.030, unsure)  # ρ = 1/20: a copied token rarely lands
    assert not alone_pays(steep, 8, 0.6, 3, 0.030, sure)  # each copied row costs 50 ms
    assert not alone_pays(flat, 8, 0.99, 8, 0.0, sure)  # a free, nearly sure draft of as many nodes


def test_the_tail_cap_prices_the_rows_below_the_path():
    flat, steep = CostCurve.from_anchors({1: 0.05, 17: 0.05}), CostCurve.from_anchors({1: 0.05, 17: 1.65})
    # a chain of 2 at α 0.8: 2.44 tokens in 70 ms; a tail token brings at most 0.64 · 0.5 tokens
    assert tail_cap(flat, 6, 0.8, 2, 2, 0.02, [0, 0]) == 6  # free rows: all of them
    assert tail_cap(steep, 6, 0.8, 2, 2, 0.02, [0, 0]) == 0  # 100 ms a row
