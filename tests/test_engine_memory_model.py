"""The memory model against hand computations."""

import numpy as np
import pytest
from engine_helpers import one_torch_thread  # noqa: F401

from specmemo.actors.engine import DRAFT, TARGET, Engine
from specmemo.actors.engine.acceptance import RankAcceptance
from specmemo.actors.engine.memory_model import (
    CostCurve,
    chain_expected_tokens,
    chain_length,
    expected_tokens,
    gamma_for_budget,
    gamma_star,
    generation_footprint,
    kv_bytes_per_token,
    kv_footprint,
    lower_bound_budget,
    speedup,
)
from specmemo.actors.engine.tiny import tiny_config, tiny_pair


def test_bytes_per_token_is_two_layers_kv_heads_head_dim_element():
    # 2 · 2 layers · 2 kv heads · (32 / 4) head dim · 4 bytes = 256
    assert kv_bytes_per_token(tiny_config(hidden=32, layers=2, heads=4, kv_heads=2), 4) == 256
    # Llama-2-7B fp16: 2 · 32 · 32 · 128 · 2 = 512 KiB
    llama7b = tiny_config(hidden=4096, layers=32, heads=32, kv_heads=32, arch="llama")
    assert kv_bytes_per_token(llama7b, 2) == 512 * 1024


def test_speedup_matches_the_worked_example():
    # α = 0.8, c = 0.05: S = 1.71, 2.22, 2.57, 2.80, 2.95 for γ = 1..5
    got = [round(speedup(0.8, g, 0.05), 2) for g in range(1, 6)]
    assert got == [1.71, 2.22, 2.57, 2.80, 2.95]
    assert expected_tokens(0.8, 2) == pytest.approx(1 + 0.8 + 0.64)
    assert expected_tokens(1.0, 3) == 4.0


def test_gamma_star_is_the_smallest_gamma_within_the_fraction_of_the_best():
    # α = 0.8, c = 0.05: S(γ) = (1 − 0.8^(γ+1)) / (0.2 · (1 + 0.05γ))
    # S(8) = 4.32891 / 1.40 = 3.09208 is the best; 0.96 of it = 2.96840;
    # S(5) = 3.68928 / 1.25 = 2.95142 falls short, S(6) = 3.95142 / 1.30 = 3.03956 does not
    speeds = [speedup(0.8, g, 0.05) for g in range(17)]
    assert max(speeds) == pytest.approx(3.09208, abs=1e-5) == speeds[8]
    assert speeds[5] == pytest.approx(2.95142, abs=1e-5) and speeds[6] == pytest.approx(3.03956, abs=1e-5)
    assert gamma_star(0.8, 0.05) == 6
    assert gamma_star(0.8, 0.05, fraction=1.0) == 8
    assert gamma_star(0.3, 0.5) == 0  # speculation does not pay when α is well below c-adjusted break-even


def test_kv_footprint_rounds_each_session_up_to_whole_blocks():
    # contexts 10 and 17, γ 3, b 8: ⌈13/8⌉ + ⌈20/8⌉ = 2 + 3 = 5 blocks · 8 tokens · (256 + 128) B
    assert kv_footprint([10, 17], 3, 256, 128, 8) == 5 * 8 * 384
    f = generation_footprint([10, 17], 3, 256, 128, 8, vocab=259, element_bytes=4, sampling=True)
    # logits: 2 sessions · ((3 + 1) + 3) rows · 259 · 4 B
    assert f.logits == 2 * 7 * 259 * 4 and f.total == f.kv + f.logits


def test_lower_bound_budget_is_the_footprint_at_gamma_star():
    budget, g = lower_bound_budget([100], 0.8, 0.05, 256, 128, 16)
    assert g == 6 and budget == 7 * 16 * 384  # ⌈106/16⌉ = 7 blocks


def test_gamma_for_budget_takes_the_largest_gamma_that_fits():
    bpt = {"target": 256, "draft": 128}
    held = {"target": 2, "draft": 2}  # 8 tokens per block: 16 slots held, context 14
    # γ <= 2 fits in what is held; γ 3..10 need a third block of both: 8 · 384 = 3072 B
    assert gamma_for_budget(0, 14, held, bpt, 8, 8) == 2
    assert gamma_for_budget(3071, 14, held, bpt, 8, 8) == 2
    assert gamma_for_budget(3072, 14, held, bpt, 8, 8) == 8
    assert gamma_for_budget(0, 17, held, bpt, 8, 8) is None


def test_measured_kv_bytes_stay_within_one_block_per_cache_of_the_model():
    draft, target = tiny_pair(seed=6, noise=0.0, draft_layers=1)
    b, gamma, prompt, new = 4, 3, np.arange(9), 30
    engine = Engine(draft, target, budget_bytes=1 << 30, block_tokens=b, gamma=gamma)
    kv_t, kv_d = engine.verifier.bytes_per_token, engine.draft.bytes_per_token
    slack = b * (kv_t + kv_d)  # one block of each cache
    seen = []
    grant_batch = engine.memory.grant_batch

    def observed(requests):
        answers = grant_batch(requests)
        usage = engine.memory.usage()
        context = usage["contexts"][requests[0]["session"]]
        modelled = kv_footprint([context], answers[0]["gamma"], kv_t, kv_d, b)
        seen.append((modelled, usage["live"]))
        return answers

    engine.memory.grant_batch = observed
    engine.generate_ids(prompt, new)
    assert len(seen) > 3
    for modelled, live in seen:
        assert modelled <= live <= modelled + slack
    assert engine.memory.usage()["peak"] <= kv_footprint([len(prompt) + new - 1], gamma, kv_t, kv_d, b) + slack
    assert {DRAFT, TARGET} <= set(engine.memory.usage()["holders"])


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.8, 0.99])
def test_a_chain_priced_by_depth_with_equal_rates_is_the_one_alpha_chain(alpha):
    for gamma in range(0, 9):
        assert chain_expected_tokens([alpha] * 8, gamma) == pytest.approx(expected_tokens(alpha, gamma))
    curve = CostCurve(0.05)
    assert chain_length([alpha] * 16, curve, fraction=0.96) == gamma_star(alpha, curve, fraction=0.96)


def test_depths_are_counted_from_chain_steps_and_default_to_the_first_rank():
    acc = RankAcceptance.empty(2)
    acc.record(accepted=2, gamma=4)  # depths 1, 2 accepted, 3 rejected, 4 not reached
    acc.record(accepted=3, gamma=3)  # all three accepted
    acc.record(accepted=1, gamma=2, tried=[1, 1], hits=[0, 1])  # a tree step: not a chain's depths
    assert acc.depth_tried == [2, 2, 2] and acc.depth_hits == [2, 2, 1]
    a1 = acc.rates(0.7, 1)[0]
    c = acc.depth_rates(0.7, 5)
    assert c[0] == pytest.approx((2 + 4 * a1) / (2 + 4)) and c[2] == pytest.approx((1 + 4 * a1) / (2 + 4))
    assert c[3:] == [pytest.approx(a1)] * 2  # never tried: the first rank's rate


def test_a_short_tree_counts_only_the_depths_its_walk_tried():
    # a walk down a chain of 2 nodes in a step granted 6 (its tree came out short): no depth 3
    acc = RankAcceptance.empty(2)
    acc.record(accepted=2, gamma=6, tried=[2, 0], hits=[2, 0])
    assert acc.depth_tried == [1, 1] and acc.depth_hits == [1, 1]


def test_bursty_acceptance_asks_for_a_longer_chain_than_one_alpha_of_the_same_first_rate():
    curve = CostCurve(0.3)
    flat = chain_length([0.7] * 12, curve, fraction=1.0)
    bursty = chain_length([0.7] + [0.9] * 11, curve, fraction=1.0)
    assert bursty > flat
