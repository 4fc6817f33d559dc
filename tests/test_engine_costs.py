"""The cost curve the driver feeds the memory side: its shape calibrated once, sent again to a new
memory side, its level from the steps, and a draft token's cost measured without the catch-up of
pending tokens."""

import numpy as np
import pytest
from engine_helpers import one_torch_thread  # noqa: F401
from hypothesis import given
from hypothesis import strategies as st

from specmemo.actors.engine import Engine
from specmemo.actors.engine.driver import Driver
from specmemo.actors.engine.memory_model import CostCurve
from specmemo.actors.engine.tiny import tiny_pair


def test_an_engine_calibrates_the_target_curve_when_built_and_steps_set_its_level():
    draft, target = tiny_pair(seed=3)
    engine = Engine(draft, target, block_tokens=4, gamma=2, gamma_max=5)  # steps observe M = 3 (less at the end)
    assert set(engine.usage()["costs"]["shape"]) == {"1", "2", "3", "5", "6"}
    assert engine.usage()["costs"]["scale"] == 1.0
    engine.generate_ids(np.arange(3, 9), max_new_tokens=4)
    costs = engine.usage()["costs"]
    assert "3" in costs["target_s"] and costs["scale"] != 1.0


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
    assert timed == []  # timed once, when the engine was built
    assert set(engine.usage()["costs"]["shape"]) == {"1", "2", "3", "5", "6"}


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


def test_anchors_give_the_shape_and_steps_one_level_for_every_m():
    curve = _anchored()
    assert curve.target(4) == pytest.approx(0.048)  # between the anchors
    assert curve.target(12) == pytest.approx(0.080 + 3 * (0.080 - 0.052) / 4)  # the last two's slope
    curve.observe(m=3, target_s=0.088)  # a step of M = 3 on a busy machine: twice the anchor
    assert curve.scale == pytest.approx(1.2)
    quiet = _anchored()
    for m in range(1, 10):  # every M is dearer alike, the used one no more than its neighbours
        assert curve.target(m) == pytest.approx(1.2 * quiet.target(m))
    assert curve.target_s == {3: 0.088}  # the steps' own averages are kept for the report


def _anchored() -> CostCurve:
    curve = CostCurve()
    for m, seconds in {1: 0.040, 2: 0.042, 3: 0.044, 5: 0.052, 9: 0.080}.items():
        curve.observe(m=m, target_s=seconds, anchor=True)
    return curve


@given(st.dictionaries(st.integers(1, 17), st.floats(1e-4, 1.0), min_size=1, max_size=8))
def test_the_anchored_curve_never_falls_with_m(anchors):
    curve = CostCurve()
    for m, seconds in anchors.items():
        curve.observe(m=m, target_s=seconds, anchor=True)
    costs = [curve.target(m) for m in range(1, 20)]
    assert all(b >= a for a, b in zip(costs, costs[1:]))
    top = max(anchors)  # within the anchors: between their least and their most
    assert costs[0] >= min(anchors.values()) and max(costs[:top]) <= max(anchors.values()) * (1 + 1e-12)


def test_without_anchors_each_m_keeps_its_own_average():
    curve = CostCurve()
    curve.observe(m=1, target_s=0.04)
    curve.observe(m=5, target_s=0.06)
    assert curve.target(3) == pytest.approx(0.05) and curve.scale == 1.0


def test_a_restarted_driver_takes_the_shape_the_memory_side_kept_without_timing_again():
    draft, target = tiny_pair(seed=3)
    engine = Engine(draft, target, block_tokens=4, gamma_max=5)
    shape = engine.memory.cost_shape()
    assert set(shape) == {1, 2, 3, 5, 6}
    timed = []
    original = engine.verifier.time_forwards
    engine.verifier.time_forwards = lambda ms, **kw: timed.append(ms) or original(ms, **kw)
    again = Driver(engine.verifier, engine.draft, engine.memory, measure_cost=True, gamma_max=5)
    again.anchor_costs()  # the verifier's process restarted; the memory side did not
    assert timed == [] and engine.memory.cost_shape() == shape
    wider = Driver(engine.verifier, engine.draft, engine.memory, measure_cost=True, gamma_max=7)
    wider.anchor_costs()  # a shape without M = 8 is not this driver's: timed
    assert timed == [(1, 2, 3, 5, 8)]
