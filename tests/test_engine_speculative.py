"""The lossless rule: greedy as a special case, and sampled output distributed as the target."""

import numpy as np
from scipy import stats

from specmemo.actors.engine.speculative import SpecStats, StepStats, probabilities, verify_chain, verify_greedy


def test_greedy_accepts_the_drafts_that_equal_the_target_argmax_then_corrects():
    logits = np.eye(5)[[1, 2, 3, 4]] * 3.0  # argmax 1, 2, 3, 4
    assert verify_greedy(np.array([1, 2, 0]), logits)[0] == 2
    n, out = verify_greedy(np.array([1, 2, 0]), logits)
    assert out.tolist() == [1, 2, 3]
    n, out = verify_greedy(np.array([1, 2, 3]), logits)
    assert (n, out.tolist()) == (3, [1, 2, 3, 4])  # all accepted: the bonus token
    n, out = verify_greedy(np.array([], dtype=np.int64), logits[:1])
    assert (n, out.tolist()) == (0, [1])  # γ = 0: plain decoding


def _chi_square_p(counts, expected_probs):
    expected = expected_probs * counts.sum()
    keep = expected >= 5
    observed = np.append(counts[keep], counts[~keep].sum())
    expected = np.append(expected[keep], expected[~keep].sum())
    if expected[-1] == 0:
        observed, expected = observed[:-1], expected[:-1]
    return stats.chisquare(observed, expected).pvalue


def test_sampled_tokens_follow_the_target_distribution_whatever_the_draft():
    # one position, γ = 2: the first emitted token must be ~ p_1 and the pair (x1, x2) ~ p_1 · p_2
    rng = np.random.default_rng(1234)
    vocab = 6
    p_logits = rng.normal(size=(3, vocab)) * 1.5
    q = probabilities(rng.normal(size=(2, vocab)) * 1.5, 1.0).astype(np.float32)
    p = probabilities(p_logits, 1.0)
    first = np.zeros(vocab)
    pairs = np.zeros((vocab, vocab))
    accepted = []
    for _ in range(20_000):
        drafts = np.array([rng.choice(vocab, p=q[0] / q[0].sum()), rng.choice(vocab, p=q[1] / q[1].sum())])
        n, out = verify_chain(drafts, p_logits, 1.0, q, rng)
        first[out[0]] += 1
        accepted.append(n)
        if len(out) >= 2:
            pairs[out[0], out[1]] += 1
    assert _chi_square_p(first, p[0]) > 0.001
    # x2 given x1 is ~ p_2 regardless of x1 (p_2 does not depend on x1 here): check each row
    for x1 in range(vocab):
        if pairs[x1].sum() > 200:
            assert _chi_square_p(pairs[x1], p[1]) > 0.001
    alpha = np.minimum(p[0], q[0]).sum()
    assert abs(np.mean(np.array(accepted) >= 1) - alpha) < 0.02  # P(first accepted) = Σ min(p, q)


def test_a_draft_equal_to_the_target_is_always_accepted():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 7))
    q = probabilities(logits[:3], 0.7).astype(np.float32)
    for _ in range(200):
        drafts = np.array([rng.choice(7, p=q[j] / q[j].sum()) for j in range(3)])
        n, out = verify_chain(drafts, logits, 0.7, q, rng)
        assert n == 3 and len(out) == 4


def test_statistics_count_acceptance_per_considered_token():
    s = SpecStats()
    s.add(StepStats("a", 4, 4, 5, 0.01, 0.02))  # all accepted: 4 considered
    s.add(StepStats("a", 4, 1, 2, 0.01, 0.02))  # second rejected: 2 considered
    d = s.as_dict()
    assert d["tokens"] == 7 and d["accepted_per_step"] == [4, 1]
    assert d["alpha"] == 5 / 6 and d["tokens_per_step"] == 3.5
