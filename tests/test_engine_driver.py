"""The step driver: typed events, a failed grant ends one turn with the engine's own error,
abort, and one draft accept per step for the whole batch."""

import numpy as np
import pytest
from engine_helpers import assert_accounting_matches_tensors, greedy_reference, one_torch_thread  # noqa: F401

from specmemo.actors.engine import DraftCore, Engine, OverBudget, TurnEvent, UnknownSession, errors
from specmemo.actors.engine.tiny import tiny_pair


@pytest.fixture(scope="module")
def pair():
    return tiny_pair(seed=7, noise=0.05, draft_layers=2)


def join(engine: Engine, session: str, prompt, max_new: int) -> None:
    engine.verifier.open(session)
    ids, keep = engine.verifier.check_prompt(session, prompt)
    engine.driver.join(session, ids, keep, max_new)


class CountingDraft:
    """A real DraftCore, with the calls the driver makes to `accept_batch` counted."""

    def __init__(self, core: DraftCore) -> None:
        self.core, self.batches = core, []

    def accept_batch(self, sessions, *args):
        self.batches.append(list(sessions))
        return self.core.accept_batch(sessions, *args)

    def __getattr__(self, name):
        return getattr(self.core, name)


def test_a_batched_step_settles_every_draft_cache_in_one_call_and_decodes_as_plain_greedy(pair):
    draft, target = pair
    engine = Engine(draft, target, block_tokens=4, gamma=3)
    counting = engine.driver.draft = CountingDraft(engine.draft)
    prompts = {"a": np.arange(5, 14), "b": np.arange(40, 46), "c": np.arange(100, 103)}
    for sid, prompt in prompts.items():
        join(engine, sid, prompt, 10)
    out, steps = {sid: [] for sid in prompts}, 0
    while engine.driver.active:
        events = engine.driver.step()
        steps += 1
        assert all(isinstance(e, TurnEvent) and e.error is None for e in events)
        assert len(counting.batches) == steps and counting.batches[-1] == [e.session for e in events]
        for event in events:
            out[event.session] += event.tokens.tolist()
        assert_accounting_matches_tensors(engine)
    assert max(len(b) for b in counting.batches) == 3
    for sid, prompt in prompts.items():
        assert out[sid] == greedy_reference(target, prompt, 10).tolist()


def test_a_session_the_memory_side_cannot_grant_ends_its_turn_with_the_engine_error(pair):
    draft, target = pair
    per_token = DraftCore(draft).bytes_per_token + DraftCore(target).bytes_per_token
    # one block of 4 tokens per cache: the prompt's 4 resident tokens fit, the pending 5th does not
    engine = Engine(draft, target, budget_bytes=4 * per_token, block_tokens=4, gamma=0, spare_blocks=0)
    join(engine, "s", np.arange(20, 25), 6)
    (event,) = engine.driver.step()
    assert isinstance(event.error, OverBudget) and "needs" in str(event.error)
    assert event.done and event.step is None and len(event.tokens) == 0 and event.stats["prompt_tokens"] == 5
    assert engine.driver.active == []
    engine.memory.release("s")  # the turn was finished on the memory side: the session is idle
    assert engine.memory.usage()["live"] == 0


def test_an_aborted_turn_leaves_the_batch_and_its_session_can_take_a_new_turn(pair):
    draft, target = pair
    engine = Engine(draft, target, block_tokens=4, gamma=2)
    join(engine, "a", np.arange(5, 12), 12)
    join(engine, "b", np.arange(60, 66), 12)
    out_b = [e.tokens.tolist() for e in engine.driver.step() if e.session == "b"][0]
    assert engine.driver.abort("a") and not engine.driver.abort("a")
    assert engine.driver.active == ["b"]
    while engine.driver.active:
        (event,) = engine.driver.step()
        assert event.session == "b"
        out_b += event.tokens.tolist()
    assert out_b == greedy_reference(target, np.arange(60, 66), 12).tolist()
    engine.memory.finish("a")  # the caller ends an aborted turn on the memory side itself
    ids, keep = engine.verifier.check_prompt("a", np.arange(5, 12))
    engine.driver.join("a", ids, keep, 12)
    out_a = []
    while engine.driver.active:
        out_a += engine.driver.step()[0].tokens.tolist()
    assert out_a == greedy_reference(target, np.arange(5, 12), 12).tolist()
    assert_accounting_matches_tensors(engine)


def test_a_batched_accept_with_an_unknown_session_changes_no_session(pair):
    draft, _ = pair
    core = DraftCore(draft, block_tokens=4)
    core.open("a", np.arange(3, 10), 2)
    proposal = core.propose(["a"], [2], [3])
    before = core.held_bytes("a")
    tokens = np.append(proposal["tokens"][0, :1], 7)
    with pytest.raises(UnknownSession):
        core.accept_batch(["a", "gone"], [1, 1], [tokens, tokens], [3, 3], [[0], [0]])
    assert core.held_bytes("a") == before
    assert core.accept_batch(["a"], [1], [tokens], [3], [[0]]) == [core.held_bytes("a")]


def test_every_engine_error_crosses_a_batched_answer_as_its_own_class():
    classes = [
        errors.OverBudget,
        errors.UnknownSession,
        errors.SessionBusy,
        errors.ContextTooLong,
        errors.BadPrompt,
        errors.TokenizerMismatch,
        errors.ModelNotFound,
        errors.CorruptModel,
        errors.DownloadFailed,
        errors.EngineError,
    ]
    for cls in classes:
        back = errors.from_answer(errors.as_answer(cls("why")))
        assert type(back) is cls and str(back) == "why"
    unknown = errors.from_answer(["NoSuchError", "kept"])
    assert type(unknown) is errors.EngineError and str(unknown) == "kept"
