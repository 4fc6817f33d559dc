"""`Driver`: speculative steps over the sessions that joined, batched across sessions.

Each step is grant (memory) -> propose (draft) -> verify in one target forward -> commit
(memory) -> settle both caches, with one call to each side for the whole batch. The Driver
talks to the draft and the memory side only through their methods, with plain data, so either
may be a remote proxy with the same method names (as the verifier actor's proxies of the draft
and memory actors are). Each step answers one `TurnEvent` per session.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .errors import EngineError, SessionBusy, from_answer
from .lookup import alone_pays, continuation, tail, tail_cap
from .memory_model import CostCurve
from .speculative import SpecStats, StepStats
from .tree import Tree

if TYPE_CHECKING:
    from .verifier import VerifierCore

#: The cache holders the memory side grants blocks to.
DRAFT, TARGET = "draft", "target"


@dataclass(frozen=True)
class TurnEvent:
    """What one step did for one session's turn."""

    session: str
    tokens: np.ndarray  # int64: the tokens this step added (none when `error` ended the turn)
    done: bool  # the turn is over: it finished, or `error` ended it
    stats: dict  # the turn so far: SpecStats.as_dict(), prompt_tokens, prefilled_tokens
    step: StepStats | None = None  # this step; None when the turn failed before it
    error: EngineError | None = None  # what ended the turn (the session stays open)


@dataclass
class _Turn:
    session: str
    remaining: int
    temperature: float
    gamma: int | None
    rng: np.random.Generator
    width: int | None = None
    forwards: int | None = None
    lookup: int = 0  # the longest lookup tail a step may add (0: none)
    prompt_tokens: int = 0
    prefilled: int = 0  # prompt tokens computed at join (the rest were reused)
    stats: SpecStats = field(default_factory=SpecStats)
    new_ids: list[int] = field(default_factory=list)
    tail_counts: list[int] = field(default_factory=lambda: [0, 0])  # lookup tail tokens tried, accepted


class Driver:
    """Runs speculative steps for the sessions that joined, batched: one draft pass and one
    target forward per step for all of them; sessions join and leave between steps.

    `draft` needs: has, open, extend, propose, accept_batch, close (see DraftCore).
    `memory` needs: has, open_session, prefill, grant_batch, commit_batch, finish, observe_costs,
    cost_shape
    (see MemoryManager). With `measure_cost`, each step's seconds per draft token and seconds of
    the target forward of M = γ + 1 tokens are sent to the memory side (it picks γ* from that
    cost curve when no fixed γ is asked).
    """

    def __init__(
        self,
        verifier: VerifierCore,
        draft,
        memory,
        stop_ids: tuple[int, ...] = (),
        measure_cost: bool = False,
        gamma_max: int = 8,
    ):
        self.verifier, self.draft, self.memory = verifier, draft, memory
        self.stop_ids = set(stop_ids)
        self.measure_cost = measure_cost
        self._turns: dict[str, _Turn] = {}
        self.gamma_max = gamma_max
        self._anchors: dict[int, float] | None = None  # t_t at the anchor Ms, timed once
        self._anchored = False  # ... and sent to the memory side
        self._shape_curve: CostCurve | None = None  # the anchors as a curve, for lookup tails

    def calibration(self, kept: dict[int, float] | None = None) -> dict[int, float]:
        """The target's seconds per forward of M new tokens at the `anchor_ms`, the shape of its
        cost curve: `kept` when it holds them all (what the memory side kept when this driver's
        process restarted), else timed once here (the fastest of 3: noise on a shared machine only
        adds time). Steps then observe only the M they use, which sets the curve's level."""
        if self._anchors is None:
            wanted = anchor_ms(self.gamma_max)
            if kept is not None and all(m in kept for m in wanted):
                self._anchors = {m: kept[m] for m in wanted}
            else:
                self._anchors = self.verifier.time_forwards(wanted, fastest=True)
        return self._anchors

    def anchor_costs(self) -> None:
        """Send the memory side the `calibration` (`CostCurve`). Called before the first step (an
        `Engine` calls it when built); call `memory_restarted` when the memory side lost what it had."""
        anchors = self.calibration(self.memory.cost_shape() if self._anchors is None else None)
        for m, seconds in anchors.items():
            self.memory.observe_costs(None, m, seconds, anchor=True)
        self._anchored = True

    def memory_restarted(self) -> None:
        """The memory side is new: its cost curve is empty; the next step sends the anchors again."""
        self._anchored = False

    @property
    def active(self) -> list[str]:
        return list(self._turns)

    def join(
        self,
        session: str,
        token_ids: np.ndarray,
        keep: int,
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int = 0,
        gamma: int | None = None,
        width: int | None = None,
        forwards: int | None = None,
        lookup: int = 0,
    ) -> None:
        """Start a turn: make `token_ids` (whole context; first `keep` unchanged) resident in both
        caches. `gamma` fixes the draft nodes per step, `width` caps the tree's width and
        `forwards` the draft forwards that grow it (default: all chosen by the memory side; a
        fixed γ alone is a chain). `lookup`: the most tokens a step copies from the context as a
        tail of the draft's path (`lookup`; 0: none). Raises OverBudget (nothing changed) when the
        budget cannot hold the prompt."""
        if session in self._turns:
            raise SessionBusy(f"session {session!r} is already generating")
        assert max_new_tokens >= 1
        ids = np.asarray(token_ids, dtype=np.int64)
        if not self.memory.has(session):
            self.memory.open_session(session)
            keep = 0
        answer = self.memory.prefill(session, keep, len(ids) - keep)
        self._drop_evicted(answer["evicted"])
        blocks = answer["blocks"]
        if TARGET in answer["rebuild"]:
            self.verifier.drop(session)
        self.verifier.prefill(session, ids, keep, blocks[TARGET])
        if DRAFT in answer["rebuild"] or not self.draft.has(session):
            self.draft.open(session, ids, blocks[DRAFT])
        else:
            self.draft.extend(session, ids, keep, blocks[DRAFT])
        remaining = min(max_new_tokens, self.verifier.max_context - len(ids))
        self._turns[session] = _Turn(
            session,
            remaining,
            temperature,
            gamma,
            np.random.default_rng(seed),
            width,
            forwards,
            lookup,
            len(ids),
            self.verifier.prefilled(session) + 1,
        )

    def leave(self, session: str) -> None:
        """Stop a turn early; the session stays open (idle) for its next turn."""
        self._turns.pop(session)
        self.memory.finish(session)

    def abort(self, session: str) -> bool:
        """Drop a turn's state without a word to the memory side (it lost the turn with its own
        state, or the caller ends the turn there itself); the session stays open, its caches
        hold what was committed. Answers whether a turn was active. Call between steps."""
        return self._turns.pop(session, None) is not None

    def step(self) -> list[TurnEvent]:
        """One speculative step over every active session; answers one event per session. A
        session the memory side cannot grant a step ends its turn with that error (an event with
        `error` set); the others go on. Done sessions leave the batch."""
        if self.measure_cost and not self._anchored:
            self.anchor_costs()
        events, granted, rates, forwards, contexts = [], [], [], [], []  # each granted session's a_1..a_w, F, ids
        turns = list(self._turns.values())
        requests, limits = [], {}
        for turn in turns:
            context = len(self.verifier.ids(turn.session))
            limit = limits[turn.session] = min(turn.remaining - 1, self.verifier.max_context - context)
            requests.append(
                {
                    "session": turn.session,
                    "gamma": turn.gamma,
                    "limit": limit,
                    "width": turn.width,
                    "forwards": turn.forwards,
                }
            )
        for turn, answer in zip(turns, self.memory.grant_batch(requests)):
            if "error" in answer:
                self._turns.pop(turn.session)
                self.memory.finish(turn.session)
                events.append(self._event(turn, np.zeros(0, dtype=np.int64), True, None, from_answer(answer["error"])))
                continue
            self._drop_evicted(answer["evicted"])
            ids = self.verifier.ids(turn.session)
            if TARGET in answer["rebuild"]:
                self.verifier.drop(turn.session)
                self.verifier.prefill(turn.session, ids, 0, answer["blocks"][TARGET])
            if DRAFT in answer["rebuild"]:
                self.draft.open(turn.session, ids, answer["blocks"][DRAFT])
            granted.append((turn, answer["gamma"], answer.get("width", 1), answer["blocks"]))
            rates.append(list(answer.get("rates") or []))
            forwards.append(answer["forwards"])
            contexts.append(ids)
        if not granted:
            return events
        sessions = [t.session for t, _, _, _ in granted]
        gammas = [g for _, g, _, _ in granted]
        widths = [w for _, _, w, _ in granted]
        drafts = np.zeros((len(granted), max(gammas)), dtype=np.int64)
        parents = np.tile(np.arange(-1, max(gammas) - 1, dtype=np.int64), (len(granted), 1))
        probs, draft_s, token_s = None, 0.0, None
        temperatures = [t.temperature for t, _, _, _ in granted]
        seeds = [t.rng.integers(0, 2**63, size=2) for t, _, _, _ in granted]
        for i, (turn, _, _, blocks) in enumerate(granted):  # a copied continuation may beat the draft
            room = min(limits[turn.session], self._free_slots(contexts[i], blocks))
            if gammas[i] and self._lookup_alone(turn, contexts[i], rates[i][0], gammas[i], forwards[i], room):
                gammas[i] = 0
        speculating = [i for i, g in enumerate(gammas) if g > 0]
        taken = [0] * len(granted)  # draft forwards per session
        if speculating:
            proposal = self.draft.propose(
                [sessions[i] for i in speculating],
                [gammas[i] for i in speculating],
                [granted[i][3][DRAFT] for i in speculating],
                [temperatures[i] for i in speculating],
                [int(seeds[i][0]) for i in speculating],
                [widths[i] for i in speculating],
                [rates[i] for i in speculating],
                [forwards[i] for i in speculating],
            )
            width = proposal["tokens"].shape[1]
            counts = (proposal["tokens"] >= 0).sum(axis=1).tolist()
            for k, i in enumerate(speculating):
                gammas[i] = counts[k]  # fewer where a tree's candidates ran out (a sampled q's draws, a vocabulary)
                taken[i] = proposal["forwards"][k]
            drafts[speculating, :width] = proposal["tokens"]
            parents[speculating, :width] = proposal["parents"]
            if proposal["probs"] is not None:
                probs = np.zeros((len(granted), drafts.shape[1], proposal["probs"].shape[-1]), dtype=np.float32)
                probs[speculating, :width] = proposal["probs"]
            draft_s, token_s = proposal["seconds"], proposal.get("token_seconds")
        target_blocks = [b[TARGET] for _, _, _, b in granted]
        main_paths = [Tree.from_rows(drafts[i], parents[i], gammas[i]).main_path() for i in range(len(granted))]
        caps = [
            self._tail_cap(t, limits[t.session], rates[i][0], len(main_paths[i]), gammas[i], taken[i], draft_s)
            for i, (t, _, _, _) in enumerate(granted)
        ]
        drafts, parents, probs, nodes = self._with_tails(
            granted, contexts, main_paths, gammas, caps, drafts, parents, probs
        )
        verify_seeds = [int(s[1]) for s in seeds]
        verdict = self.verifier.verify(
            sessions, drafts, nodes, target_blocks, temperatures, probs, verify_seeds, parents, counted=gammas
        )
        if self.measure_cost and verdict["seconds"] > 0:
            # t_d: the draft's one-token forwards (a catch-up of several pending tokens is not a
            # draft token's cost); t_t(M): the target forward of M = Nmax + 1 (lookup tails included)
            self.memory.observe_costs(token_s, max(nodes) + 1, verdict["seconds"])
        drafted = [sum(node < gammas[i] for node in verdict["paths"][i]) for i in range(len(granted))]
        for i, (turn, _, _, _) in enumerate(granted):  # the tail's rate: its tokens tried, accepted
            length, attach = nodes[i] - gammas[i], int(parents[i, gammas[i]]) if nodes[i] > gammas[i] else 0
            if length and (attach < 0 or attach in verdict["paths"][i]):
                hits = verdict["accepted"][i] - drafted[i]
                turn.tail_counts[0] += hits + (hits < length)
                turn.tail_counts[1] += hits
        kept = []
        for i, (turn, _, _, _) in enumerate(granted):
            tokens = verdict["tokens"][i][: turn.remaining]
            stops = [k for k, t in enumerate(tokens) if int(t) in self.stop_ids]
            kept.append(tokens[: stops[0] + 1] if stops else tokens)
        commits = self.memory.commit_batch(
            [
                {
                    "session": t.session,
                    "accepted": drafted[i],
                    "emitted": len(kept[i]),
                    "tried": verdict["tried"][i],
                    "hits": verdict["hits"][i],
                }
                for i, (t, _, _, _) in enumerate(granted)
            ]
        )
        paths = [[int(node) for node in verdict["paths"][i]] for i in range(len(granted))]
        for i, (turn, _, _, _) in enumerate(granted):
            self.verifier.settle(turn.session, kept[i], commits[i]["blocks"][TARGET], paths[i])
        self.draft.accept_batch(sessions, verdict["accepted"], kept, [c["blocks"][DRAFT] for c in commits], paths)
        for i, (turn, _, width, _) in enumerate(granted):
            gamma, n, tokens = gammas[i], drafted[i], kept[i]
            done = (len(tokens) and int(tokens[-1]) in self.stop_ids) or len(tokens) >= turn.remaining
            turn.remaining -= len(tokens)
            turn.new_ids.extend(int(t) for t in tokens)
            looked_up = max(0, min(len(tokens), verdict["accepted"][i]) - n)
            step = StepStats(
                turn.session, gamma, n, len(tokens), draft_s, verdict["seconds"], width, taken[i], looked_up
            )
            turn.stats.add(step)
            if done:
                self._turns.pop(turn.session)
                self.memory.finish(turn.session)
            events.append(self._event(turn, tokens, bool(done), step, None))
        return events

    def _tail_cap(self, turn: _Turn, limit: int, alpha: float, depth: int, n: int, forwards: int, draft_s) -> int:
        # the most lookup tail tokens this step (`lookup.tail_cap`), within γ_max nodes (the Ms the
        # curve was timed at) and the tokens its turn can still take; unpriced without a calibration
        cap = min(turn.lookup, self.gamma_max - n, limit - n)
        if cap <= 0 or self._anchors is None:
            return max(0, cap)
        seconds = draft_s if forwards else 0.0
        return tail_cap(self._shape(), cap, alpha, depth, n, seconds, turn.tail_counts)

    def _lookup_alone(self, turn: _Turn, ids, alpha: float, gamma: int, forwards: int, room: int) -> bool:
        # whether this step verifies the context's copied continuation (at most `room` tokens)
        # without the draft (`lookup.alone_pays`); only once the turn has timed its draft, on a
        # calibrated curve
        if turn.lookup <= 0 or self._anchors is None or not turn.stats.forwards:
            return False
        found = continuation(ids, min(turn.lookup, self.gamma_max, room))
        seconds = forwards * turn.stats.draft_s / turn.stats.forwards
        return len(found) > 0 and alone_pays(self._shape(), len(found), alpha, gamma, seconds, turn.tail_counts)

    def _shape(self) -> CostCurve:
        # the calibration as a curve (its level, not the memory side's in-situ scale)
        if self._shape_curve is None:
            assert self._anchors is not None, "priced only once calibrated"
            self._shape_curve = CostCurve.from_anchors(self._anchors)
        return self._shape_curve

    def _free_slots(self, ids: np.ndarray, blocks: dict) -> int:
        # the target cache's slots past the committed context and its pending token, in `blocks`
        return blocks[TARGET] * self.verifier.block_tokens - len(ids)

    def _with_tails(self, granted, contexts, main_paths, gammas, caps, drafts, parents, probs):
        # each row's lookup tail (`lookup.tail`) of at most caps[i] tokens after its draft nodes,
        # within the slots its target blocks hold past them; answers the (widened) drafts, parents
        # and probs and each row's node count, the tails' included
        tails = []
        for i, (_, _, _, blocks) in enumerate(granted):
            room = min(caps[i], self._free_slots(contexts[i], blocks) - gammas[i])
            tails.append(tail(contexts[i], drafts[i], main_paths[i], gammas[i], room) if room > 0 else ([], []))
        nodes = [g + len(t) for g, (t, _) in zip(gammas, tails)]
        if nodes == gammas:
            return drafts, parents, probs, nodes
        width = max(max(nodes), drafts.shape[1])  # rows may have fewer nodes than granted (candidates ran out)
        wide_drafts = np.full((len(granted), width), -1, dtype=np.int64)
        wide_parents = np.full((len(granted), width), -1, dtype=np.int64)
        wide_drafts[:, : drafts.shape[1]], wide_parents[:, : parents.shape[1]] = drafts, parents
        for i, ((tokens, up), g) in enumerate(zip(tails, gammas)):
            wide_drafts[i, g : g + len(tokens)], wide_parents[i, g : g + len(tokens)] = tokens, up
        if probs is not None:  # a tail node is a point mass: a row of zeros
            wide = np.zeros((len(granted), width, probs.shape[-1]), dtype=np.float32)
            wide[:, : probs.shape[1]] = probs
            probs = wide
        return wide_drafts, wide_parents, probs, nodes

    def run(self):
        """Step until no session is active, yielding each step's events."""
        while self._turns:
            yield self.step()

    def turn_ids(self, session: str) -> np.ndarray:
        return np.asarray(self._turns[session].new_ids, dtype=np.int64)

    def _event(self, turn: _Turn, tokens, done: bool, step: StepStats | None, error: EngineError | None) -> TurnEvent:
        stats = {**turn.stats.as_dict(), "prompt_tokens": turn.prompt_tokens, "prefilled_tokens": turn.prefilled}
        return TurnEvent(turn.session, np.asarray(tokens, dtype=np.int64), done, stats, step, error)

    def _drop_evicted(self, sessions: list[str]) -> None:
        for sid in sessions:
            if self.verifier.has(sid):
                self.verifier.drop(sid)
            self.draft.close(sid)


def anchor_ms(gamma_max: int) -> tuple[int, ...]:
    """The Ms at which the target's cost curve is calibrated: 1, 2, 3, 5, 9 and γ_max + 1 (those up
    to γ_max + 1): dense where a chain's γ* usually lies, interpolated between; 9 is the most rows
    the row-blocked kernels (native/row_blocks.h) take in one pass over the weights."""
    return tuple(m for m in (1, 2, 3, 5, 9) if m < gamma_max + 1) + (gamma_max + 1,)
