"""A draft head over part of the vocabulary: its logits are the whole head's on the rows it keeps
and −inf elsewhere, the rows are the base ids, the stop ids and the session's context, and
speculation with it stays lossless (greedy equal to the target's, sampling its distribution)."""

import numpy as np
import pytest
import torch
from engine_helpers import greedy_reference, one_torch_thread  # noqa: F401
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from specmemo.actors.engine import Engine
from specmemo.actors.engine.draft import DraftCore
from specmemo.actors.engine.precision import apply_precision
from specmemo.actors.engine.tiny import tiny_pair
from specmemo.actors.engine.vocabulary import AUTO_ROWS, DraftVocabulary, auto_rows

VOCAB = 272  # 17 blocks of 16 rows


def _int4_pair(seed=3, vocab_size=VOCAB, noise=0.05, target_precision="float32"):
    draft, target = tiny_pair(seed=seed, vocab_size=vocab_size, noise=noise, draft_layers=2)
    apply_precision(draft, "int4", role="draft")
    apply_precision(target, target_precision)
    return draft, target


def test_the_subset_keeps_the_whole_heads_logits_on_its_rows_and_minus_infinity_elsewhere():
    draft, _ = _int4_pair()
    draft.generation_config.eos_token_id = 250  # a stop id above the base rows
    rule = DraftVocabulary.for_model(draft, 64)
    head = rule.session()
    head.add(np.array([5, 100, 101, 203]))  # 5: a base row; 100, 101: block 6; 203: block 12
    hidden = torch.randn(3, draft.config.hidden_size)
    whole = draft.lm_head(hidden)
    got = head(hidden)
    kept = np.r_[0:64, 96:112, 192:208, 240:256]
    assert head.rows == len(kept)
    assert torch.equal(got[:, kept], whole[:, kept])  # bit for bit: each row is computed alone
    assert torch.isneginf(got[:, np.setdiff1d(np.arange(VOCAB), kept)]).all()
    assert head.contains(250) and head.contains(203) and not head.contains(150)


def test_past_its_cap_the_context_blocks_seen_least_recently_leave_first():
    draft, _ = _int4_pair()
    rule = DraftVocabulary(draft.lm_head, 32, max_blocks=3)
    head = rule.session()
    head.add([40, 60, 80])  # blocks 2, 3, 5
    head.add([41])  # block 2 seen again
    head.add([100])  # block 6: the cap drops block 3, the least recent
    assert [head.contains(t) for t in (40, 60, 80, 100)] == [True, False, True, True]
    assert head.rows == 32 + 3 * 16


def test_auto_rows_subsets_only_large_four_bit_heads():
    small, _ = _int4_pair()
    assert auto_rows(small) == 0 and DraftCore(small).vocabulary is None
    float_draft, _ = tiny_pair(seed=1, vocab_size=4 * AUTO_ROWS, hidden=16, layers=1)
    assert auto_rows(float_draft) == 0
    with pytest.raises(ValueError, match="4-bit"):
        DraftVocabulary.for_model(float_draft, 64)
    apply_precision(float_draft, "int4", role="draft")
    assert auto_rows(float_draft) == AUTO_ROWS
    with pytest.raises(ValueError, match="multiple of 16"):
        DraftVocabulary.for_model(float_draft, 100)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    rows=st.sampled_from([16, 64, 128, 256]),
    gamma=st.one_of(st.none(), st.integers(1, 5)),
    width=st.integers(1, 3),
    prompts=st.lists(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=12), min_size=1, max_size=3),
    max_new=st.integers(1, 10),
)
def test_greedy_output_with_a_subset_head_equals_the_targets_own(seed, rows, gamma, width, prompts, max_new):
    # one session alone (the lean path) or several in one batch (the batched path), chains and trees
    draft, target = _int4_pair(seed=seed)
    engine = Engine(draft, target, block_tokens=4, gamma=gamma, tree=3, vocab_rows=rows)
    assert engine.draft.vocab_rows == rows
    for i, prompt in enumerate(prompts):
        engine.verifier.open(str(i))
        ids, keep = engine.verifier.check_prompt(str(i), prompt)
        engine.driver.join(str(i), ids, keep, max_new, gamma=gamma, width=width)
    out: dict[str, list[int]] = {str(i): [] for i in range(len(prompts))}
    for events in engine.driver.run():
        for event in events:
            out[event.session] += event.tokens.tolist()
    for i, prompt in enumerate(prompts):
        assert out[str(i)] == greedy_reference(target, prompt, max_new).tolist()
        head = engine.draft._sessions[str(i)].head
        assert head is not None and all(head.contains(t) for t in list(prompt) + out[str(i)])


def test_sampled_output_with_a_subset_head_follows_the_target_distribution():
    # the draft can only propose ids 0..15 (the prompt's block); the target's residual draws the rest
    vocab, temperature, runs, batch = 32, 1.0, 2400, 400
    draft, target = _int4_pair(seed=11, vocab_size=vocab, noise=0.3)
    engine = Engine(draft, target, budget_bytes=1 << 30, block_tokens=2, gamma=2, vocab_rows=16)
    prompt = [5]
    for sid in ("a", "b"):  # a batch of drafts: q has no mass outside the prompt's block
        engine.draft.open(sid, np.array(prompt), 4)
    q = engine.draft.propose(["a", "b"], [2, 2], [4, 4], 1.0, [1, 2])["probs"]
    assert (q[..., 16:] == 0).all() and np.allclose(q.sum(-1), 1)
    counts = np.zeros((vocab, vocab))
    for first in range(0, runs, batch):
        for ids, _ in engine.generate_batch([prompt] * batch, 2, temperature, seeds=list(range(first, first + batch))):
            counts[ids[0], ids[1]] += 1
    with torch.no_grad():
        p1 = torch.softmax(target(torch.tensor([prompt])).logits[0, -1].double() / temperature, -1)
        p2 = torch.softmax(target(torch.tensor([prompt + [x] for x in range(vocab)])).logits[:, -1].double(), -1)
    expected = (p1[:, None] * p2).numpy().ravel() * runs
    observed = counts.ravel()
    big = expected >= 5
    observed = np.append(observed[big], observed[~big].sum())
    expected = np.append(expected[big], expected[~big].sum())
    assert stats.chisquare(observed, expected).pvalue > 0.001
    assert counts[16:].sum() > 0  # first tokens the draft could not propose were drawn too
