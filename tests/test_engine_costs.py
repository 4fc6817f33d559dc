"""The cost curve the driver feeds the memory side: anchored once, sent again to a new memory
side, and a draft token's cost measured without the catch-up of pending tokens."""

import numpy as np
from engine_helpers import one_torch_thread  # noqa: F401

from specmemo.actors.engine import Engine
from specmemo.actors.engine.memory_model import CostCurve
from specmemo.actors.engine.tiny import tiny_pair


def test_the_target_curve_is_anchored_at_one_and_gamma_max_plus_one_before_the_first_step():
    draft, target = tiny_pair(seed=3)
    engine = Engine(draft, target, block_tokens=4, gamma=2, gamma_max=5)  # steps observe M = 3 only
    engine.generate_ids(np.arange(3, 9), max_new_tokens=4)
    assert {"1", "6"} <= set(engine.usage()["costs"]["target_s"])


def test_a_restarted_memory_side_gets_the_anchors_again_without_timing_them_again():
    draft, target = tiny_pair(seed=3)
    engine = Engine(draft, target, block_tokens=4, gamma=2, gamma_max=5)  # steps observe M = 3 only
    timed = []
    original = engine.verifier.time_forwards
    engine.verifier.time_forwards = lambda ms, **kw: timed.append(ms) or original(ms, **kw)
    engine.generate_ids(np.arange(3, 9), max_new_tokens=3)
    engine.memory.costs = CostCurve(0.1)  # what a restarted memory actor starts from
    engine.driver.memory_restarted()
    engine.generate_ids(np.arange(3, 9), max_new_tokens=3)
    assert timed == [(1, 6)]
    assert {"1", "6"} <= set(engine.usage()["costs"]["target_s"])


def test_a_proposal_times_only_the_forwards_that_fed_one_token_a_row():
    draft, target = tiny_pair(seed=3)
    engine = Engine(draft, target, block_tokens=4)
    engine.draft.open("s", np.arange(3, 12), blocks=4)
    drafts = engine.draft.propose(["s"], [2], [4])["tokens"][0]
    engine.draft.accept("s", 2, np.append(drafts, 7), blocks=4)  # all accepted: two tokens pending
    one = engine.draft.propose(["s"], [1], [4])  # its only forward catches up
    assert one["token_seconds"] is None
    engine.draft.accept("s", 0, np.array([8]), blocks=4)
    three = engine.draft.propose(["s"], [3], [4])
    assert three["token_seconds"] is not None and 0 < three["token_seconds"] <= three["seconds"]
