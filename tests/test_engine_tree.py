"""Token trees: the walk, the memory model's tree sizing, the draft's growth, the KV kept."""

import itertools

import numpy as np
import pytest
import torch
from engine_helpers import assert_accounting_matches_tensors, greedy_reference, one_torch_thread  # noqa: F401
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from specmemo.actors.engine import Engine
from specmemo.actors.engine.acceptance import RankAcceptance
from specmemo.actors.engine.draft import _Draw, _rank_rates
from specmemo.actors.engine.manager import MemoryManager
from specmemo.actors.engine.memory_model import (
    CostCurve,
    expected_tokens,
    gamma_star,
    lower_bound_budget,
    tree_expected_tokens,
    tree_forwards,
    tree_lower_bound_budget,
    tree_shape,
    tree_speedup,
)
from specmemo.actors.engine.speculative import probabilities, verify_chain
from specmemo.actors.engine.tiny import tiny_pair
from specmemo.actors.engine.tree import Tree, verify_tree


def _logits_for(rows: list[int], vocab: int = 6) -> np.ndarray:
    # one-hot-ish logits whose argmax is rows[i]
    out = np.zeros((len(rows), vocab))
    out[np.arange(len(rows)), rows] = 5.0
    return out


# ------------------------------------------------------------------ the walk


def test_greedy_walk_takes_the_branch_that_matches_the_target_at_every_depth():
    # root children: 3 (rank 1), 4 (rank 2); node 1 (token 4) has children 0, 2; node 3 (token 2) has child 5
    tree = Tree.from_rows(np.array([3, 4, 0, 2, 5]), np.array([-1, -1, 1, 1, 3]), 5)
    # target argmax: after root 4, after node1 2, after node3 5, after node4 1
    logits = _logits_for([4, 0, 2, 0, 5, 1])
    verdict = verify_tree(tree, logits, 0.0)
    assert verdict.path == [1, 3, 4] and verdict.tokens.tolist() == [4, 2, 5, 1]
    # visits: root (2 children, rank 2 hit), node 1 (2 children, rank 2 hit), node 3 (1 child, hit)
    assert verdict.tried == [3, 2] and verdict.hits == [1, 2]


def test_a_chain_walk_answers_what_the_chain_rule_answers():
    rng = np.random.default_rng(0)
    for trial in range(200):
        gamma, vocab = int(rng.integers(0, 5)), 7
        drafts = rng.integers(0, vocab, gamma)
        logits = rng.normal(size=(gamma + 1, vocab)) * 2
        q = probabilities(rng.normal(size=(gamma, vocab)), 1.0)
        tree = Tree.chain(drafts)
        for temperature in (0.0, 0.9):
            n, tokens = verify_chain(drafts, logits, temperature, q, np.random.default_rng(trial))
            verdict = verify_tree(tree, logits, temperature, q, np.random.default_rng(trial), ranks=1)
            assert (verdict.accepted, verdict.tokens.tolist()) == (n, tokens.tolist())
            assert verdict.hits == [n] and verdict.tried == [min(n + 1, gamma)] or gamma == 0


def test_sampled_walk_over_point_mass_children_emits_the_target_distribution():
    # two rounds of the multi-draft rule: root children 1, 2 (point masses), node 0 children 0, 3;
    # the first two emitted tokens must follow p(x1) p(x2 | x1) whatever the tree
    vocab, temperature = 5, 1.0
    rng = np.random.default_rng(1)
    root = rng.normal(size=vocab)
    after = rng.normal(size=(vocab, vocab))
    tree = Tree.from_rows(np.array([1, 2, 0, 3]), np.array([-1, -1, 0, 0]), 4)
    p1 = probabilities(root, temperature)
    p2 = probabilities(after, temperature)
    exact = p1[:, None] * p2
    counts = np.zeros((vocab, vocab))
    runs = 6000
    for seed in range(runs):
        logits = np.stack([root, after[1], after[2], after[0], after[3]])
        verdict = verify_tree(tree, logits, temperature, None, np.random.default_rng(seed))
        x1 = int(verdict.tokens[0])
        x2 = (
            int(verdict.tokens[1])
            if len(verdict.tokens) > 1
            else int(np.random.default_rng(10**6 + seed).choice(vocab, p=p2[x1]))
        )
        counts[x1, x2] += 1
    observed, expected = counts.ravel(), exact.ravel() * runs
    big = expected >= 5
    observed = np.append(observed[big], observed[~big].sum())
    expected = np.append(expected[big], expected[~big].sum())
    assert stats.chisquare(observed, expected).pvalue > 0.001


def test_children_drawn_without_replacement_keep_the_target_distribution_and_the_chains_first_rank():
    # three root children drawn by the draft's sampler (q less the earlier siblings' tokens, each
    # answered with the q it was drawn from): the emitted token follows p, and the first child is
    # accepted as often as a chain's sampled token, 1 − TV(p, q)
    vocab, runs = 6, 8000
    rng = np.random.default_rng(3)
    p_logits, q = rng.normal(size=vocab) * 1.5, probabilities(rng.normal(size=vocab) * 1.5, 1.0)
    p = probabilities(p_logits, 1.0)
    counts, first = np.zeros(vocab), 0
    for seed in range(runs):
        draws, nodes, qs = np.random.default_rng(seed), [], []
        pending = _Draw.first(-1, 0.0, q, 3)
        while pending is not None:
            node, pending = pending.draw(draws)
            nodes.append(node.token)
            qs.append(node.q)
        assert len(set(nodes)) == len(nodes) == 3
        tree = Tree.from_rows(np.array(nodes), np.full(3, -1), 3)
        logits = np.vstack([p_logits, np.zeros((3, vocab))])
        verdict = verify_tree(tree, logits, 1.0, np.array(qs), np.random.default_rng(10**6 + seed))
        counts[verdict.tokens[0]] += 1
        first += verdict.hits[0]
    assert stats.chisquare(counts, p * runs).pvalue > 0.001
    chain = np.minimum(p, q).sum()
    assert abs(first / runs - chain) < 4 * np.sqrt(chain * (1 - chain) / runs)


# ------------------------------------------------------------------ the memory model


@given(alpha=st.floats(0.0, 0.99), nodes=st.integers(0, 12))
def test_a_width_one_tree_is_the_chain_formula(alpha, nodes):
    assert np.isclose(tree_expected_tokens([alpha], nodes), expected_tokens(alpha, nodes))


def _best_tree_by_enumeration(rates: list[float], nodes: int) -> float:
    # every tree of `nodes` nodes whose children have ranks 1..len(rates) (each node's children
    # take the lowest ranks), by brute force over parent choices: the largest sum of path products
    best = 0.0
    for parents in itertools.product(*[range(-1, i) for i in range(nodes)]):
        counts: dict[int, int] = {}
        value = {-1: 1.0}
        ok = True
        for i, p in enumerate(parents):
            counts[p] = counts.get(p, 0) + 1
            if counts[p] > len(rates):
                ok = False
                break
            value[i] = value[p] * rates[counts[p] - 1]
        if ok:
            best = max(best, sum(v for k, v in value.items() if k >= 0))
    return 1.0 + best


def _rates(a1: float, share: float, third: float) -> list[float]:
    # a_1..a_3 of a sub-distribution: a_2 takes `share` of what a_1 leaves, a_3 `third` of the rest
    second = (1 - a1) * share * 0.9
    return [a1, second, (1 - a1 - second) * third * 0.9]


rank_rates = st.builds(_rates, st.floats(0.05, 0.95), st.floats(0.0, 1.0), st.floats(0.0, 1.0))


def _curve(target, draft_s: float, ms: int = 17, anchor: bool = False) -> CostCurve:
    # a cost curve that observed t_t(m) = target(m) for m = 1..ms (as in-situ steps, or as the
    # calibration's shape with `anchor`) and t_d = draft_s
    curve = CostCurve()
    for m in range(1, ms + 1):
        curve.observe(m=m, target_s=target(m), anchor=anchor)
    curve.observe(draft_s=draft_s)
    return curve


@settings(max_examples=40, deadline=None)
@given(rates=rank_rates, nodes=st.integers(0, 6), width=st.integers(1, 3))
def test_the_model_is_the_best_tree_of_its_width_and_never_below_a_chain(rates, nodes, width):
    a1 = rates[0]
    value = tree_expected_tokens(rates, nodes, width)
    ordered = sorted(rates[:width], reverse=True)  # the draft's r-th choice right less often than its (r-1)-th
    assert np.isclose(value, _best_tree_by_enumeration(ordered, nodes))
    assert value >= _best_tree_by_enumeration(rates[:width], nodes) - 1e-12  # children in rank order: no more
    assert value >= expected_tokens(a1, nodes) - 1e-12
    assert tree_expected_tokens(rates, nodes + 1, width) >= value
    assert tree_expected_tokens(rates, nodes, min(width + 1, 3)) >= value - 1e-12


def test_a_tree_is_as_wide_as_allowed_and_sized_by_the_cost_curve():
    curve = _curve(lambda m: 0.05 + 0.001 * m, 0.005)
    nodes, width, forwards = tree_shape([0.6, 0.2, 0.1], curve, 1.0, 16, 3)
    assert width == 3 and nodes > 3 and 1 <= forwards <= nodes
    # branching costs the draft nothing, so a useful second choice is worth at least the chain's nodes
    chain = gamma_star(0.6, curve, 1.0, 16)
    assert tree_shape([0.6, 0.0, 0.0], curve, 1.0, 16, 3)[0] == chain <= nodes
    assert tree_shape([0.6, 0.2, 0.1], curve, 1.0, 16, 1) == (chain, 1, chain)
    # a steep target cost in M: fewer nodes
    steep = _curve(lambda m: 0.05 * m, 0.005)
    assert tree_shape([0.6, 0.2, 0.1], steep, 1.0, 16, 3)[0] < nodes


def test_large_trees_pay_where_a_verification_is_cheap_and_the_draft_sets_their_forwards():
    # the large-N benchmark's rank rates; the target's forward as dear for 49 tokens as for one
    rates = [0.73, 0.18, 0.06]
    shapes = {ratio: tree_shape(rates, CostCurve(ratio), 0.96, 48, 3) for ratio in (0.0, 0.02, 0.2)}
    # a free draft: the large trees of docs/memory-model.md; a dearer draft forward: fewer forwards,
    # and leaves (free on a flat target) fill the tree (0.2: this CPU's draft, a GPU's flat target)
    assert shapes == {0.0: (40, 3, 29), 0.02: (22, 3, 9), 0.2: (7, 3, 3)}
    # this CPU's target: a row costs ~7% of a one-token forward up to M = 9, more past it
    cpu = _curve(lambda m: 0.036 + 0.0026 * (m - 1) + 0.0034 * max(0, m - 9), 0.0095, anchor=True)
    assert tree_shape(rates, cpu, 0.96, 48, 3).nodes <= 4


@settings(max_examples=40, deadline=None)
@given(
    rates=st.lists(st.floats(0.0, 0.33), min_size=3, max_size=3),
    draft=st.floats(0.0, 0.5),
    slope=st.floats(0.0, 0.2),
    nodes_max=st.integers(1, 12),
    forwards_max=st.one_of(st.none(), st.integers(1, 12)),
)
def test_the_shape_sweep_is_the_best_of_every_n_and_f(rates, draft, slope, nodes_max, forwards_max):
    # tree_forwards' one sweep against tree_speedup at every (N, F) a tree of width 3 can reach
    curve = _curve(lambda m: 1.0 + slope * (m - 1), draft, nodes_max + 1, anchor=True)
    for nodes in range(1, nodes_max + 1):
        feasible = [f for f in range(1, min(nodes, forwards_max or nodes) + 1) if f * 3 >= nodes]
        best = max((tree_speedup(rates, nodes, 3, curve, f) for f in feasible), default=0.0)
        chosen = tree_forwards(rates, curve, nodes, 3, forwards_max)
        assert (chosen == 0) == (not feasible)
        if feasible:
            assert tree_speedup(rates, nodes, 3, curve, chosen) == pytest.approx(best, rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(rates=rank_rates, nodes=st.integers(0, 12), forwards=st.integers(1, 12), width=st.integers(1, 3))
def test_fewer_forwards_never_gain_and_a_chain_stops_at_its_forwards(rates, nodes, forwards, width):
    a1 = rates[0]
    value = tree_expected_tokens(rates, nodes, width, forwards)
    assert value <= tree_expected_tokens(rates, nodes, width) + 1e-12  # F = N: the best tree
    assert value <= tree_expected_tokens(rates, nodes, width, forwards + 1) + 1e-12
    assert value <= tree_expected_tokens(rates, nodes + 1, width, forwards) + 1e-12
    # leaves only: a node the forwards did not feed offers no child
    assert np.isclose(tree_expected_tokens(rates, nodes, 1, forwards), expected_tokens(a1, min(nodes, forwards)))
    assert np.isclose(tree_expected_tokens(rates, nodes, width, 1), 1 + sum(sorted(rates[:width])[::-1][:nodes]))


def test_the_lower_bound_budget_of_a_tree_covers_its_nodes():
    curve = _curve(lambda m: 0.05 + 0.001 * m, 0.004)
    kv, (nodes, width, _) = tree_lower_bound_budget([100], [0.6, 0.2], curve, 1000, 100, 16, width_max=2)
    assert width == 2 and kv == -(-(100 + nodes) // 16) * 16 * 1100
    chain_kv, chain = tree_lower_bound_budget([100], [0.6], curve, 1000, 100, 16, width_max=1)
    assert lower_bound_budget([100], 0.6, curve, 1000, 100, 16) == (chain_kv, chain.nodes)


def test_rank_rates_keep_the_rank_models_order():
    acceptance = RankAcceptance.empty(3)
    acceptance.record(5, 8, tried=[10, 10, 2], hits=[0, 5, 0])  # the second choice right more often
    rates = acceptance.rates(0.7, 3)
    assert rates[0] >= rates[1] >= rates[2] and rates[1] == rates[0] and sum(rates) <= 0.99 + 1e-12
    # priced as the tree the draft grows (`_rank_rates` leaves rates in order unchanged)
    assert _rank_rates(rates, 3) == rates


def _tree_manager(target, draft_s: float) -> MemoryManager:
    # a manager of trees up to width 3 and 12 nodes, one session "s" of 20 tokens, costs observed
    # as t_t(m) = target(m) for m = 1..13 and t_d = draft_s
    m = MemoryManager(1 << 30, block_tokens=4, gamma_max=12, width_max=3)
    m.add_holder("draft", 10)
    m.add_holder("target", 20)
    m.open_session("s")
    m.prefill("s", 0, 20)
    for m_ in range(1, 14):
        m.observe_costs(None, m_, target(m_))
    m.observe_costs(draft_s, None, None)
    return m


def _regrant(m: MemoryManager, **shape) -> dict:
    # end the open step with nothing accepted, then grant the next
    m.commit("s", 0, 1, [1, 0, 0], [0, 0, 0])
    return m.grant("s", **shape)


def test_commits_feed_the_rank_rates_and_grants_answer_the_width():
    m = _tree_manager(lambda m_: 0.05 + 0.0005 * m_, 0.004)
    before = m.rates("s")
    for _ in range(30):
        answer = m.grant("s")
        assert 1 <= answer["width"] <= 3 and answer["gamma"] <= 12
        # a walk whose second choice is right as often as the first
        tried = [2, 2, 1][: answer["width"]] + [0] * (3 - answer["width"])
        hits = [1, 1, 0] if answer["width"] > 1 and answer["gamma"] >= 2 else [0, 0, 0]
        m.commit("s", sum(hits), sum(hits) + 1, tried, hits)
    after = m.rates("s")
    assert after[1] > before[1]
    answer = m.grant("s")
    assert answer["width"] > 1
    # the answer's rates are those the shape was priced with (the session's, to the width granted)
    assert answer["rates"] == after[: answer["width"]]
    # a fixed γ without a width is a chain; with one it is that wide
    assert _regrant(m, gamma=4)["width"] == 1
    assert _regrant(m, gamma=4, width=2)["width"] == 2


def test_a_grant_answers_the_forwards_of_its_shape_within_its_nodes():
    m = _tree_manager(lambda m_: 0.05, 0.01)  # a flat target (leaves cost nothing), a draft a fifth of it
    for _ in range(10):
        m.grant("s", gamma=3, width=3)
        m.commit("s", 2, 3, [2, 1, 1], [1, 1, 0])  # second choices right half the time
    answer = m.grant("s")
    shape = tree_shape(m.rates("s"), m.costs, m.fraction, 12, 3)
    assert (answer["gamma"], answer["width"], answer["forwards"]) == tuple(shape)
    assert 1 <= answer["forwards"] < answer["gamma"]
    # a fixed γ: one forward a node unless capped; the cap stays within 1..γ; a chain feeds all
    assert _regrant(m, gamma=5, width=2)["forwards"] == 5
    assert _regrant(m, gamma=5, width=2, forwards=2)["forwards"] == 2
    assert _regrant(m, gamma=5, width=2, forwards=0)["forwards"] == 1
    assert _regrant(m, gamma=5, forwards=2)["forwards"] == 5
    # a cap holds the nodes to what its forwards can offer (F · w), fixed or chosen
    assert _regrant(m, gamma=9, width=3, forwards=1)["gamma"] == 3
    capped = _regrant(m, forwards=1)
    assert capped["forwards"] == 1 and capped["gamma"] <= 3
    # a limit below N*: the best F for the nodes granted, not N*'s
    cut = _regrant(m, limit=3)
    assert cut["gamma"] == 3 and cut["forwards"] == tree_forwards(m.rates("s"), m.costs, 3, cut["width"]) < shape[2]


def test_trees_of_few_forwards_and_short_trees_decode_greedy_and_sampled():
    # 2 forwards of width 2 offer at most 4 nodes: the grant holds the 6 asked for to 4
    draft, target = tiny_pair(seed=11, vocab_size=16, noise=0.02, draft_layers=2)
    engine = Engine(draft, target, block_tokens=4, gamma=6, tree=2, forwards=2)
    prompt = np.arange(1, 7)
    ids, stats = engine.generate_ids(prompt, 20)
    assert ids.tolist() == greedy_reference(target, prompt, 20).tolist()
    assert stats["forwards"] <= 2 * stats["steps"] and stats["drafted"] <= 4 * stats["steps"]
    assert stats["forwards"] < stats["drafted"]  # leaves were drafted
    # sampled at a low temperature q is exactly 0 past its likeliest token, so a node has one draw
    # and the trees come out shorter than granted (the step must verify what was drafted)
    ids, stats = engine.generate_ids(prompt, 12, temperature=0.01, seed=1)
    assert len(ids) == 12 and stats["drafted"] < 4 * stats["steps"]
    batch = engine.generate_batch([prompt, prompt[:3]], 12, 1.0, seeds=[1, 2])
    assert all(len(ids) == 12 and stats["forwards"] <= 2 * stats["steps"] for ids, stats in batch)


# ------------------------------------------------------------------ the draft and the caches


def _draft_engine():
    # (draft model, an Engine around it, a prompt): the draft cores' tests
    draft, _ = tiny_pair(seed=3, noise=0.3, draft_layers=2)
    return draft, Engine(draft, draft, block_tokens=4), np.arange(5, 12)


def _plain_logits(draft, prompt, tokens, parents, node: int) -> torch.Tensor:
    # the draft's own forward over the prompt and the path to `node` (−1: the root): its next logits
    path = []
    while node >= 0:
        path.insert(0, int(tokens[node]))
        node = int(parents[node])
    with torch.no_grad():
        return draft(torch.tensor([prompt.tolist() + path])).logits[0, -1]


def test_the_draft_grows_its_tree_from_its_own_top_choices():
    draft, engine, prompt = _draft_engine()
    engine.draft.open("s", prompt, 4)
    out = engine.draft.propose(["s"], [7], [4], 0.0, None, [3])
    tokens, parents = out["tokens"][0], out["parents"][0]
    tree = Tree.from_rows(tokens, parents, 7)
    first = _plain_logits(draft, prompt, tokens, parents, -1)
    assert set(tokens[parents == -1].tolist()) <= set(torch.topk(first, 3).indices.tolist())
    assert tokens[0] == int(first.argmax())
    for node, kids in tree.children().items():
        assert len(set(tokens[kids].tolist())) == len(kids) <= 3  # distinct siblings
        if node >= 0:
            # a child is one of its parent's top-3 tokens given the parent's path (plain forward)
            logits = _plain_logits(draft, prompt, tokens, parents, node)
            assert set(tokens[kids].tolist()) <= set(torch.topk(logits, 3).indices.tolist())


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_tree_of_few_forwards_is_the_same_growth_cut_short_then_its_best_leaves(temperature):
    draft, engine, prompt = _draft_engine()

    def propose(nodes: int, forwards: int | None):
        engine.draft.open("s", prompt, 4)
        fed = None if forwards is None else [forwards]
        out = engine.draft.propose(["s"], [nodes], [4], temperature, [7], [3], [[0.5, 0.3, 0.1]], fed)
        return out["tokens"][0], out["parents"][0], list(engine.draft._get("s").slots), out["forwards"]

    full_tokens, full_parents, _, _ = propose(9, None)
    for forwards in (1, 2, 4):
        tokens, parents, slots, taken = propose(9, forwards)
        assert taken == [forwards]
        # the first F nodes are the full growth's first F (the same selections, the same draws)
        assert tokens[:forwards].tolist() == full_tokens[:forwards].tolist()
        assert parents[:forwards].tolist() == full_parents[:forwards].tolist()
        # F forwards feed the root and F − 1 nodes: only those have children, and only they hold KV
        assert set(parents[parents >= 0].tolist()) <= set(range(forwards - 1))
        assert [s >= 0 for s in slots] == [i < forwards - 1 for i in range(len(slots))]
        # the rest are leaves: as many as the candidates allow (3 children a fed node)
        assert (tokens >= 0).sum() == min(9, 3 * forwards)
        tree = Tree.from_rows(tokens, parents, int((tokens >= 0).sum()))
        for kids in tree.children().values():
            assert len(set(tokens[kids].tolist())) == len(kids)  # distinct siblings
        if temperature == 0:  # greedy: the leaves are the best of the fed nodes' top-3 children left
            values = {}  # node -> log path probability under the draft's own forward
            candidates = []  # (value, parent, token) of every fed node's top-3 children
            for node in range(-1, forwards - 1):
                logp = torch.log_softmax(_plain_logits(draft, prompt, tokens, parents, node), -1)
                base = values.get(node, 0.0)
                top = torch.topk(logp, 3)
                candidates += [(base + v, node, t) for v, t in zip(top.values.tolist(), top.indices.tolist())]
                for child in range(len(tokens)):
                    if parents[child] == node and tokens[child] >= 0:
                        values[child] = base + float(logp[tokens[child]])
            taken_nodes = {(int(parents[i]), int(tokens[i])) for i in range(int((tokens >= 0).sum()))}
            left = [v for v, p, t in candidates if (p, t) not in taken_nodes]
            # the F-th node taken (after the last forward) and all after it: what the forwards left
            leaves = [values[i] for i in range(forwards - 1, int((tokens >= 0).sum()))]
            assert leaves and (min(leaves) >= max(left) - 1e-4 if left else 3 * forwards <= 9)


def test_a_sampled_tree_grows_by_the_sessions_rank_rates_whatever_tokens_it_draws():
    _, engine, prompt = _draft_engine()

    def parents(seed: int, rates: list[float]) -> list[int]:
        engine.draft.open("s", prompt, 4)
        out = engine.draft.propose(["s"], [4], [4], 1.0, [seed], [2], [rates])
        assert (out["probs"][0].sum(axis=-1) > 0.99).all()  # every node sampled, with its q
        return out["parents"][0].tolist()

    # a first draw accepted 80% of the time and a second 10%: the rank model's best tree is a chain
    assert parents(1, [0.8, 0.1]) == parents(2, [0.8, 0.1]) == [-1, 0, 1, 2]
    # a second draw worth the first: the root's two draws come before any grandchild
    shapes = {tuple(parents(seed, [0.3, 0.3])) for seed in range(5)}
    assert len(shapes) == 1 and list(shapes.pop())[:2] == [-1, -1]


def test_rank_rates_are_cleaned_before_they_key_a_tree():
    # one rate a rank up to the width, in [0, 1], none above the rank before it (the model's order)

    assert _rank_rates(None, 3) is None and _rank_rates([], 3) is None
    assert _rank_rates([0.5], 3) == [0.5, 0.0, 0.0]
    assert _rank_rates([0.4, 0.6, float("nan"), 0.9], 3) == [0.4, 0.4, 0.0]
    assert _rank_rates([1.5, -1.0], 2) == [1.0, 0.0]


@pytest.mark.parametrize("forwards", [None, 2])
def test_after_a_tree_step_both_caches_hold_exactly_a_plain_prefill_of_the_committed_tokens(forwards):
    # with 2 forwards only the root and the first node are fed: the other 5 of the 6 nodes never are
    draft, target = tiny_pair(seed=6, noise=0.02, draft_layers=2)
    engine = Engine(draft, target, block_tokens=4, gamma=6, tree=3)
    engine.verifier.open("s")
    ids, keep = engine.verifier.check_prompt("s", np.arange(2, 11))
    engine.driver.join("s", ids, keep, 30, gamma=6, width=3, forwards=forwards)
    for _ in range(3):
        engine.driver.step()
        assert_accounting_matches_tensors(engine)
    committed = engine.verifier.ids("s")
    for core, model in ((engine.verifier, target), (engine.draft, draft)):
        cache = core._get("s").cache
        with torch.no_grad():
            ref = model(torch.tensor([committed[: cache.length].tolist()]), use_cache=True).past_key_values
        for layer, ref_layer in zip(cache.layers, ref.layers):
            torch.testing.assert_close(layer.keys[:, :, : cache.length], ref_layer.keys, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(layer.values[:, :, : cache.length], ref_layer.values, rtol=1e-4, atol=1e-5)


def test_a_tree_gets_more_tokens_per_step_than_a_chain_of_the_same_nodes_on_a_noisy_draft():
    draft, target = tiny_pair(seed=9, noise=0.3, draft_layers=2)
    prompts = [np.arange(i, i + 6) % 250 for i in range(0, 60, 10)]
    per_step = {}
    for tree in (1, 3):
        engine = Engine(draft, target, block_tokens=8, gamma=6, tree=tree)
        runs = engine.generate_batch(prompts, 24)
        per_step[tree] = sum(s["tokens"] for _, s in runs) / sum(s["steps"] for _, s in runs)
        for p, (ids, _) in zip(prompts, runs):
            assert ids.tolist() == greedy_reference(target, p, 24).tolist()
    assert per_step[3] > per_step[1]
