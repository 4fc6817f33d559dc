"""The memory manager core: grants, commits, eviction, leases, and its invariants under a state machine."""

import pytest
from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from specmemo.actors.engine.errors import OverBudget, SessionBusy, UnknownSession
from specmemo.actors.engine.manager import MemoryManager

B = 4  # tokens per block
BPT = {"draft": 3, "target": 5}  # bytes per token: a block of both costs 4 · 8 = 32 B


def _manager(budget, **kw):
    m = MemoryManager(budget, block_tokens=B, **kw)
    for h, bpt in BPT.items():
        m.add_holder(h, bpt)
    return m


def test_a_budget_below_one_block_of_each_cache_is_refused():
    m = MemoryManager(31, block_tokens=B)
    m.add_holder("draft", 3)
    with pytest.raises(OverBudget):
        m.add_holder("target", 5)


def test_prefill_charges_all_but_the_last_token_in_whole_blocks():
    m = _manager(1000)
    m.open_session("a")
    got = m.prefill("a", 0, 10)
    assert got["blocks"] == {"draft": 3, "target": 3}  # 9 resident tokens
    assert m.usage()["live"] == 3 * 4 * 8


def test_grant_covers_the_candidates_and_commit_frees_rejected_blocks_at_once():
    m = _manager(10_000)
    m.open_session("a")
    m.prefill("a", 0, 8)
    g = m.grant("a", gamma=8)
    assert g["gamma"] == 8 and g["blocks"] == {"draft": 4, "target": 4}  # ⌈(8 + 8)/4⌉
    c = m.commit("a", accepted=0, emitted=1)  # context 9, 8 resident: 2 blocks + 1 spare
    assert c["blocks"] == {"draft": 3, "target": 3} and c["freed"] == 32
    assert m.usage()["live"] == 3 * 32


def test_rejected_tokens_return_their_blocks_but_one_spare():
    m = _manager(10_000)
    m.open_session("a")
    m.prefill("a", 0, 9)
    m.grant("a", gamma=3)
    assert m.commit("a", 0, 1)["blocks"]["target"] == 3  # ⌈12/4⌉ held, 9 resident → ⌈9/4⌉ + 1 = 4 ≥ 3 kept
    assert m.grant("a", gamma=3)["blocks"]["target"] == 4  # ⌈13/4⌉


def test_grant_shrinks_gamma_before_evicting_anyone():
    m = _manager(6 * 32)
    for sid in "ab":
        m.open_session(sid)
        m.prefill(sid, 0, 9)  # 2 blocks each
    m.finish("a")
    g = m.grant("b", gamma=8)  # 2 blocks free: context 9 + γ <= 16 slots
    assert g["gamma"] == 7 and g["evicted"] == []


def test_idle_sessions_are_evicted_least_recently_used_first():
    m = _manager(7 * 32)
    for sid in "abc":
        m.open_session(sid)
        m.prefill(sid, 0, 5)  # one block each
    m.finish("b")
    m.finish("a")
    m.grant("c", gamma=0)
    m.commit("c", 0, 1)
    got = m.prefill("c", 6, 15)  # 20 resident: 5 blocks, needs 4 more, 4 free (7 − 3)... then 1 more
    assert got["evicted"] == [] and m.usage()["live"] == 7 * 32
    got = m.grant("c", gamma=4)  # context 21 + γ: needs ⌈21/4⌉ = 6 > 5: evict b (older idle) first
    assert got["evicted"] == ["b"] and got["gamma"] == 3
    assert m.usage()["sessions"]["b"] == 0 and m.prefill("b", 0, 5)["rebuild"] == ["draft", "target"]


def test_over_budget_is_raised_only_after_evicting_all_idle_would_not_do_and_changes_nothing():
    m = _manager(3 * 32)
    m.open_session("a")
    m.prefill("a", 0, 9)  # 2 blocks
    m.open_session("b")
    before = m.usage()
    with pytest.raises(OverBudget):
        m.prefill("b", 0, 9)  # a is busy: nothing to evict
    assert m.usage() == before


def test_release_holder_reclaims_its_blocks_and_asks_for_a_rebuild():
    m = _manager(10_000)
    m.open_session("a")
    m.prefill("a", 0, 9)  # 8 resident: 2 blocks
    got = m.release_holder("draft")
    assert got == {"freed": 2 * 4 * 3, "sessions": ["a"]}
    assert m.usage()["holders"]["draft"] == 0
    assert m.grant("a", gamma=1)["rebuild"] == ["draft"]  # context 9 + 1: 3 blocks
    assert m.usage()["holders"] == {"draft": 3 * 4 * 3, "target": 3 * 4 * 5}


def test_unknown_and_double_opened_sessions_are_refused():
    m = _manager(1000)
    with pytest.raises(UnknownSession):
        m.grant("nope")
    m.open_session("a")
    with pytest.raises(SessionBusy):
        m.open_session("a")
    m.prefill("a", 0, 3)
    with pytest.raises(SessionBusy):
        m.commit("a", 0, 1)  # no grant open


def test_gamma_follows_the_acceptance_estimate():
    m = _manager(100_000, gamma_max=8, cost_ratio=0.05)
    m.open_session("a")
    m.prefill("a", 0, 4)
    high = m.grant("a")["gamma"]
    for _ in range(30):
        m.commit("a", 0, 1)
        m.grant("a", gamma=4)
    m.commit("a", 0, 1)
    assert m.alpha("a") < 0.1
    assert m.grant("a")["gamma"] < high


def test_a_session_without_speculation_drafts_one_token_every_few_steps_to_measure_acceptance():
    m = _manager(100_000, gamma_max=8, cost_ratio=2.0)  # a draft dearer than the target: γ* = 0
    m.open_session("a")
    m.prefill("a", 0, 4)
    gammas = []
    for _ in range(12):
        gammas.append(m.grant("a")["gamma"])
        m.commit("a", 0, 1)
    assert gammas == [0, 0, 0, 1] * 3


def test_gamma_grows_when_the_measured_target_cost_is_flat_in_m():
    flat, steep = _manager(100_000, gamma_max=8), _manager(100_000, gamma_max=8)
    for m, slope in ((flat, 0.0), (steep, 0.5)):
        for g in range(1, 10):  # t_t(M) = 1 + slope·(M − 1), t_d = 0.3
            m.observe_costs(0.3, g, 1.0 + slope * (g - 1))
        m.open_session("a")
        m.prefill("a", 0, 4)
    assert flat.grant("a")["gamma"] > steep.grant("a")["gamma"]
    assert flat.cost_ratio == pytest.approx(0.3)


class ManagerMachine(RuleBasedStateMachine):
    """The manager against a plain-dict model of contexts, turns and open grants."""

    def __init__(self):
        super().__init__()
        self.m = None
        self.model: dict[str, dict] = {}
        self.reserved: dict[tuple[str, str], int] = {}  # (owner, key) -> bytes: a solver's plans

    @rule(budget=st.integers(32, 40 * 32))
    @precondition(lambda self: self.m is None)
    def create(self, budget):
        self.m = _manager(budget, gamma_max=6)

    @rule(sid=st.sampled_from("abcdef"))
    @precondition(lambda self: self.m is not None)
    def open(self, sid):
        if sid in self.model:
            with pytest.raises(SessionBusy):
                self.m.open_session(sid)
            return
        self.m.open_session(sid)
        self.model[sid] = {"context": 0, "busy": False, "gamma": None, "lost": set()}

    @rule(data=st.data(), add=st.integers(1, 30))
    @precondition(lambda self: self.m is not None and self.model)
    def prefill(self, data, add):
        sid = data.draw(st.sampled_from(sorted(self.model)))
        s = self.model[sid]
        keep = data.draw(st.integers(0, s["context"]))
        before = self.m.usage()
        need = {h: -(-(keep + add - 1) // B) for h in BPT}
        try:
            got = self.m.prefill(sid, keep, add)
        except OverBudget:
            assert self.m.usage() == before
            self._assert_refusal_warranted(sid, need, before)
            return
        note(f"prefill {sid} {keep}+{add} -> {got}")
        self._evicted(got["evicted"])
        s.update(context=keep + add, busy=True, gamma=None, lost=set())
        assert all(n * B >= keep + add - 1 for n in got["blocks"].values())

    @rule(data=st.data(), gamma=st.one_of(st.none(), st.integers(0, 8)))
    @precondition(lambda self: self.m is not None and any(s["context"] for s in self.model.values()))
    def grant(self, data, gamma):
        sid = data.draw(st.sampled_from(sorted(k for k, s in self.model.items() if s["context"])))
        before = self.m.usage()
        held = {h: len(ids) for h, ids in self.m.session_blocks(sid).items()}
        s = self.model[sid]
        # γ = 0 needs ⌈L/b⌉ blocks in each cache; a lost cache is rebuilt from nothing
        need = {h: max(0 if h in s["lost"] else held.get(h, 0), -(-s["context"] // B)) for h in BPT}
        try:
            got = self.m.grant(sid, gamma)
        except OverBudget:
            assert self.m.usage() == before
            self._assert_refusal_warranted(sid, need, before)
            return
        note(f"grant {sid} {gamma} -> {got}")
        self._evicted(got["evicted"])
        s = self.model[sid]
        assert set(got["rebuild"]) == s["lost"]
        s.update(busy=True, gamma=got["gamma"], lost=set())
        assert gamma is None or got["gamma"] <= gamma
        assert all(n * B >= s["context"] + got["gamma"] for n in got["blocks"].values())

    @rule(data=st.data())
    @precondition(lambda self: self.m is not None and any(s["gamma"] is not None for s in self.model.values()))
    def commit(self, data):
        sid = data.draw(st.sampled_from(sorted(k for k, s in self.model.items() if s["gamma"] is not None)))
        s = self.model[sid]
        accepted = data.draw(st.integers(0, s["gamma"]))
        emitted = data.draw(st.integers(0, accepted + 1))
        live = self.m.usage()["live"]
        got = self.m.commit(sid, accepted, emitted)
        s.update(context=s["context"] + emitted, gamma=None)
        assert self.m.usage()["live"] == live - got["freed"] and got["freed"] >= 0
        for holder, n in got["blocks"].items():
            if holder in s["lost"]:
                assert n == 0
            else:
                assert s["context"] - 1 <= n * B <= s["context"] - 1 + 2 * B

    @rule(data=st.data())
    @precondition(lambda self: self.m is not None and self.model)
    def finish(self, data):
        sid = data.draw(st.sampled_from(sorted(self.model)))
        self.m.finish(sid)
        self.model[sid].update(busy=False, gamma=None)

    @rule(data=st.data())
    @precondition(lambda self: self.m is not None and self.model)
    def release(self, data):
        sid = data.draw(st.sampled_from(sorted(self.model)))
        self.m.release(sid)
        del self.model[sid]
        with pytest.raises(UnknownSession):
            self.m.grant(sid)

    @rule(holder=st.sampled_from(sorted(BPT)))
    @precondition(lambda self: self.m is not None)
    def holder_dies(self, holder):
        self.m.release_holder(holder)
        assert self.m.usage()["holders"][holder] == 0
        for s in self.model.values():
            s["lost"].add(holder)

    @rule(owner=st.sampled_from(["solver", "solver-2"]), key=st.sampled_from("pqr"), nbytes=st.integers(0, 20 * 32))
    @precondition(lambda self: self.m is not None)
    def reserve(self, owner, key, nbytes):
        before = self.m.usage()
        try:
            got = self.m.reserve(owner, key, nbytes)
        except OverBudget:
            assert self.m.usage() == before
            # warranted: the growth exceeds what is free plus every idle session's bytes
            extra = nbytes - self.reserved.get((owner, key), 0)
            evictable = sum(before["sessions"][sid] for sid, s in self.model.items() if not s["busy"])
            assert extra > before["budget"] - before["live"] + evictable, (extra, before, evictable)
            return
        note(f"reserve {owner} {key} {nbytes} -> {got}")
        self._evicted(got["evicted"])
        self.reserved[(owner, key)] = nbytes

    @rule(data=st.data())
    @precondition(lambda self: self.m is not None and self.reserved)
    def unreserve(self, data):
        owner, key = data.draw(st.sampled_from(sorted(self.reserved)))
        live = self.m.usage()["live"]
        held = self.reserved.pop((owner, key))
        assert self.m.unreserve(owner, key) == held
        assert self.m.usage()["live"] == live - held

    @rule(owner=st.sampled_from(["solver", "solver-2"]))
    @precondition(lambda self: self.m is not None)
    def reserving_actor_dies(self, owner):
        held = sum(b for (o, _), b in self.reserved.items() if o == owner)
        assert self.m.release_reservations(owner) == held
        self.reserved = {k: b for k, b in self.reserved.items() if k[0] != owner}

    def _assert_refusal_warranted(self, sid, need, usage):
        # OverBudget only when the blocks the session needs exceed what is free plus what
        # evicting every idle session (by the model's own record of who is busy) would free
        held = {h: len(ids) for h, ids in self.m.session_blocks(sid).items()}
        extra = sum((need[h] - held.get(h, 0)) * B * BPT[h] for h in BPT)
        evictable = sum(usage["sessions"][other] for other, s in self.model.items() if other != sid and not s["busy"])
        assert extra > usage["budget"] - usage["live"] + evictable, (sid, need, held, usage, evictable)

    def _evicted(self, sids):
        for sid in sids:
            assert not self.model[sid]["busy"], "only idle sessions are evicted"
            assert self.m.usage()["sessions"][sid] == 0
            self.model[sid]["lost"] = set(BPT)

    @invariant()
    def granted_never_exceeds_the_budget(self):
        if self.m is None:
            return
        u = self.m.usage()
        assert 0 <= u["live"] <= u["budget"] and u["peak"] <= u["budget"]
        reserved = sum(self.reserved.values())
        assert u["live"] == sum(u["sessions"].values()) + reserved == sum(u["holders"].values()) + reserved
        assert sum(u["reserved"].values()) == reserved

    @invariant()
    def every_block_is_owned_by_exactly_one_holder_or_free(self):
        if self.m is None:
            return
        owners = self.m.block_owners()
        seen = []
        for sid in self.model:
            for holder, ids in self.m.session_blocks(sid).items():
                seen += ids
                assert all(owners[i] == (holder, sid) for i in ids)
        assert sorted(seen) == sorted(owners) and len(set(seen)) == len(seen)
        live = sum(len(ids) * B * BPT[h] for sid in self.model for h, ids in self.m.session_blocks(sid).items())
        assert live + sum(self.reserved.values()) == self.m.usage()["live"]

    @invariant()
    def contexts_match_the_model(self):
        if self.m is not None:
            assert self.m.usage()["contexts"] == {sid: s["context"] for sid, s in self.model.items()}


ManagerMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_manager_state_machine = ManagerMachine.TestCase
