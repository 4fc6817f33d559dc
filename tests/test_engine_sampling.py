"""Sampled speculative decoding, end to end, follows the target's distribution."""

import numpy as np
import pytest
import torch
from engine_helpers import one_torch_thread  # noqa: F401
from scipy import stats

from specmemo.actors.engine import Engine
from specmemo.actors.engine.precision import apply_precision
from specmemo.actors.engine.tiny import tiny_pair

VOCAB = 8


def _exact_pair_distribution(target, prompt, temperature):
    # P(x1, x2) = p(x1 | prompt) · p(x2 | prompt, x1), from plain forwards without cache
    with torch.no_grad():
        p1 = torch.softmax(target(torch.tensor([prompt])).logits[0, -1].double() / temperature, -1)
        rows = torch.tensor([list(prompt) + [x] for x in range(VOCAB)])
        p2 = torch.softmax(target(rows).logits[:, -1].double() / temperature, -1)
    return (p1[:, None] * p2).numpy()


@pytest.mark.parametrize(
    "precisions,tree,gamma,forwards",
    [
        (("float32", "float32"), 1, 2, None),
        (("int4", "int8"), 1, 2, None),
        (("float32", "float32"), 2, 2, None),
        (("float32", "float32"), 2, 4, None),
        (("float32", "float32"), 2, 4, 2),
    ],
)
def test_sampled_output_follows_the_target_distribution_over_two_tokens(precisions, tree, gamma, forwards):
    # (draft, target) precisions; the reference is the same-precision target's own distribution.
    # tree 1: sampled chains (q-ratio rule); tree 2: the first step verifies a tree whose children
    # are draws from q without replacement (γ + 1 tokens asked, so that the first step may draft γ nodes):
    # 2 nodes, both under the root, or 4, where the second round's two picks compete across both
    # root children's draws, so which nodes exist depends on the tokens drawn before them; with
    # 2 forwards, the last two of those 4 are leaves drawn after the forwards stopped
    draft, target = tiny_pair(seed=11, vocab_size=VOCAB, noise=0.3, draft_layers=2)
    apply_precision(draft, precisions[0], role="draft")
    apply_precision(target, precisions[1])
    engine = Engine(draft, target, budget_bytes=1 << 30, block_tokens=2, gamma=gamma, tree=tree, forwards=forwards)
    prompt = [5]  # one token: nothing to prefill, so each run costs only its speculative steps
    temperature = 0.8
    counts = np.zeros((VOCAB, VOCAB))
    accepted = []
    runs, batch = 2400, 400
    for first in range(0, runs, batch):
        out = engine.generate_batch(
            [prompt] * batch, 2 if tree == 1 else gamma + 1, temperature, seeds=list(range(first, first + batch))
        )
        for ids, st in out:
            counts[ids[0], ids[1]] += 1
            accepted += st["accepted_per_step"]
    expected = _exact_pair_distribution(target, prompt, temperature).ravel() * runs
    observed = counts.ravel()
    big = expected >= 5
    observed = np.append(observed[big], observed[~big].sum())
    expected = np.append(expected[big], expected[~big].sum())
    assert stats.chisquare(observed, expected).pvalue > 0.001
    assert 0 < np.mean(accepted) < 2  # the draft is neither always right nor always wrong


def test_the_same_seed_gives_the_same_sample():
    draft, target = tiny_pair(seed=4, noise=0.1, draft_layers=2)
    engine = Engine(draft, target, block_tokens=4, gamma=3)
    a, _ = engine.generate_ids([3, 1, 4, 1, 5], 20, temperature=1.0, seed=9)
    b, _ = engine.generate_ids([3, 1, 4, 1, 5], 20, temperature=1.0, seed=9)
    c, _ = engine.generate_ids([3, 1, 4, 1, 5], 20, temperature=1.0, seed=10)
    assert a.tolist() == b.tolist() != c.tolist()
