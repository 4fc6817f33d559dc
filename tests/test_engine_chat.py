"""Chat sessions: multi-turn KV reuse, streaming, eviction and recompute, and bad input."""

import numpy as np
import pytest
from engine_helpers import assert_accounting_matches_tensors, greedy_reference, one_torch_thread  # noqa: F401

from specmemo.actors.engine import (
    BadPrompt,
    ContextTooLong,
    DraftCore,
    Engine,
    OverBudget,
    SessionBusy,
    TokenizerMismatch,
    UnknownSession,
)
from specmemo.actors.engine.tiny import EOS_ID, tiny_pair, tiny_tokenizer


@pytest.fixture(scope="module")
def pair():
    return tiny_pair(seed=21, noise=0.05, draft_layers=2)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def test_multi_turn_chat_reuses_the_kv_of_earlier_turns_and_matches_plain_greedy(pair, tokenizer):
    draft, target = pair
    engine = Engine(draft, target, tokenizer, block_tokens=8, gamma=3)
    for turn, message in enumerate(["hello", "tell me more", "thanks"]):
        history = engine.verifier.ids("s") if turn else np.zeros(0, dtype=np.int64)
        if turn:
            prompt, keep = engine.verifier.chat_prompt("s", message)
            assert keep == len(history) and prompt[: len(history)].tolist() == history.tolist()
            continuation = tokenizer.decode(prompt[len(history) :])
            assert continuation.endswith(f"user\n{message}<|im_end|>\n<|im_start|>assistant\n")
        else:
            messages = [{"role": "user", "content": message}]
            prompt = np.array(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False))
        text, ids, stats = engine.chat("s", message, max_new_tokens=12)
        assert ids.tolist() == greedy_reference(target, prompt, 12, stop=EOS_ID).tolist()
        assert engine.verifier.ids("s").tolist() == prompt.tolist() + ids.tolist()
        assert stats["tokens"] == len(ids)
        assert_accounting_matches_tensors(engine)


def test_a_reply_that_round_trips_through_text_gives_the_same_ids_as_rendering_everything(pair, tokenizer):
    draft, target = pair
    engine = Engine(draft, target, tokenizer)
    engine.verifier.open("t")
    first, _ = engine.verifier.chat_prompt("t", "hi")
    reply = np.array(tokenizer.encode("hello there", add_special_tokens=False) + [EOS_ID])
    engine.verifier.prefill("t", np.concatenate([first, reply]), 0, 4)
    engine.verifier.end_turn("t", "hi", reply)
    ids, keep = engine.verifier.chat_prompt("t", "how are you?")
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello there"},
        {"role": "user", "content": "how are you?"},
    ]
    assert ids.tolist() == tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    assert keep == len(first) + len(reply)


def test_streaming_yields_the_reply_step_by_step(pair, tokenizer):
    draft, target = pair
    engine = Engine(draft, target, tokenizer, block_tokens=4, gamma=2)
    chunks = [tokens.tolist() for tokens, _ in engine.chat_stream("a", "hi", max_new_tokens=10)]
    other = Engine(draft, target, tokenizer, block_tokens=4, gamma=2)
    _, ids, stats = other.chat("a", "hi", max_new_tokens=10)
    assert sum(chunks, []) == ids.tolist() and len(chunks) == stats["steps"]
    assert all(1 <= len(c) <= 3 for c in chunks)


def test_an_evicted_session_is_recomputed_and_continues_the_same(pair, tokenizer):
    draft, target = pair
    per_token = DraftCore(draft).bytes_per_token + DraftCore(target).bytes_per_token
    small = Engine(draft, target, tokenizer, budget_bytes=13 * 8 * per_token, block_tokens=8, gamma=2)
    large = Engine(draft, target, tokenizer, budget_bytes=1 << 30, block_tokens=8, gamma=2)
    script = [("a", "first question"), ("b", "another one here"), ("a", "and again"), ("b", "more")]
    for sid, message in script:
        got = small.chat(sid, message, max_new_tokens=10)
        want = large.chat(sid, message, max_new_tokens=10)
        assert got[0] == want[0] and got[1].tolist() == want[1].tolist()
        assert_accounting_matches_tensors(small)
    assert small.usage()["evictions"] >= 2 and large.usage()["evictions"] == 0
    assert small.usage()["peak"] <= small.usage()["budget"]


def test_a_budget_too_small_for_one_token_is_refused(pair, tokenizer):
    draft, target = pair
    with pytest.raises(OverBudget):
        Engine(draft, target, tokenizer, budget_bytes=100, block_tokens=8)


def test_a_prompt_over_the_budget_is_refused_and_disturbs_no_other_session(pair, tokenizer):
    draft, target = pair
    per_token = DraftCore(draft).bytes_per_token + DraftCore(target).bytes_per_token
    engine = Engine(draft, target, tokenizer, budget_bytes=6 * 8 * per_token, block_tokens=8, gamma=2)
    engine.verifier.open("a")
    ids_a, keep = engine.verifier.check_prompt("a", np.arange(10, 20))
    engine.driver.join("a", ids_a, keep, 8)
    out = engine.driver.step()[0].tokens.tolist()
    engine.verifier.open("b")
    ids_b, keep = engine.verifier.check_prompt("b", np.arange(60))
    before = engine.memory.usage()
    with pytest.raises(OverBudget):
        engine.driver.join("b", ids_b, keep, 8)
    assert engine.memory.usage()["sessions"]["a"] == before["sessions"]["a"]
    while engine.driver.active:
        out += engine.driver.step()[0].tokens.tolist()
    assert out == greedy_reference(target, np.arange(10, 20), 8).tolist()


def test_empty_and_over_long_prompts_are_refused(pair, tokenizer):
    draft, target = pair
    engine = Engine(draft, target, tokenizer, block_tokens=8)
    with pytest.raises(BadPrompt):
        engine.chat("a", "", max_new_tokens=4)
    with pytest.raises(BadPrompt):
        engine.generate_ids([], 4)
    with pytest.raises(BadPrompt):
        engine.generate_ids([1, 2, 999], 4)
    with pytest.raises(ContextTooLong):
        engine.generate_ids(np.zeros(512, dtype=np.int64), 4)
    text, ids, _ = engine.chat("a", "fine now", max_new_tokens=4)
    assert len(ids) == 4


def test_unknown_sessions_are_refused_by_every_core(pair, tokenizer):
    draft, target = pair
    engine = Engine(draft, target, tokenizer)
    with pytest.raises(UnknownSession):
        engine.verifier.ids("nope")
    with pytest.raises(UnknownSession):
        engine.draft.propose(["nope"], [2], [1])
    with pytest.raises(UnknownSession):
        engine.memory.grant("nope")


def test_a_session_cannot_start_a_second_turn_while_generating(pair, tokenizer):
    draft, target = pair
    engine = Engine(draft, target, tokenizer, gamma=1)
    stream = engine.chat_stream("a", "hello", max_new_tokens=20)
    next(stream)
    with pytest.raises(SessionBusy):
        engine.chat("a", "interrupt", max_new_tokens=2)
    stream.close()
    _, ids, _ = engine.chat("a", "now", max_new_tokens=3)
    assert len(ids) == 3


def test_a_pair_without_a_shared_vocabulary_is_refused(tokenizer):
    draft, _ = tiny_pair(seed=1, vocab_size=300)
    _, target = tiny_pair(seed=1)
    with pytest.raises(TokenizerMismatch):
        Engine(draft, target, tokenizer)


def test_cores_list_their_sessions_and_forget_closed_ones(pair, tokenizer):
    draft, target = pair
    engine = Engine(draft, target, tokenizer)
    engine.chat("x", "one", max_new_tokens=2)
    engine.chat("y", "two", max_new_tokens=2)
    assert sorted(engine.verifier.sessions()) == sorted(engine.draft.sessions()) == ["x", "y"]
    engine.close("x")
    assert engine.verifier.sessions() == engine.draft.sessions() == ["y"]
    assert list(engine.usage()["sessions"]) == ["y"]
