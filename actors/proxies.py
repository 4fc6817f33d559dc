"""Synchronous proxies of the memory and draft actors, for the verifier actor's Driver.

The Driver runs in a worker thread and calls its memory and draft sides by the cores' method
names; these proxies turn each call into one request through the verifier actor's socket, in
its trio loop (`call`), and each typed reply into what the core's method answers (a plain map
where the core answers one: `to_wire`). RemoteDraft also rides out a draft actor that dies or
restarts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from specmemo.protocol import errors
from specmemo.protocol.schema import to_wire


def cost_shape(usage) -> dict[int, float]:
    """The calibration timings of the target's cost curve in a memory actor's `Usage`, {M: seconds}."""
    return {int(m): float(s) for m, s in ((usage.costs or {}).get("shape") or {}).items()}


class RemoteMemory:
    """The memory actor, called synchronously from the Driver's worker thread."""

    def __init__(self, call: Callable[..., Any], actor: str, owner: str) -> None:
        self._call, self.actor, self.owner = call, actor, owner

    def has(self, session: str) -> bool:
        return self._call(self.actor, "has", session=session).has

    def open_session(self, session: str) -> None:
        self._call(self.actor, "open", session=session, owner=self.owner)

    def prefill(self, session: str, keep: int, add: int) -> dict:
        return to_wire(self._call(self.actor, "prefill", session=session, keep=keep, add=add))

    def grant_batch(self, requests: list[dict]) -> list[dict]:
        return [to_wire(a) for a in self._call(self.actor, "grant_batch", requests=requests).answers]

    def commit_batch(self, requests: list[dict]) -> list[dict]:
        return [to_wire(a) for a in self._call(self.actor, "commit_batch", requests=requests).answers]

    def finish(self, session: str) -> None:
        self._call(self.actor, "finish", session=session)

    def release(self, session: str) -> int:
        return self._call(self.actor, "release", session=session).freed

    def cost_shape(self) -> dict[int, float]:
        return cost_shape(self._call(self.actor, "usage"))

    def observe_costs(
        self,
        draft_s: float | None,
        m: int | None,
        target_s: float | None,
        anchor: bool = False,
    ) -> None:
        params = {"draft_s": draft_s, "m": m, "target_s": target_s, "anchor": anchor}
        self._call(self.actor, "observe_costs", **params)


class RemoteDraft:
    """The draft actor, called synchronously from the Driver's worker thread.

    A call that meets a dead or restarted draft (``ActorDied``, or ``NotFound`` for a session
    the new process never saw) waits for the draft to be back, rebuilds the sessions involved
    from the verifier's committed token ids, and retries.
    """

    def __init__(
        self, call: Callable[..., Any], actor: str, ids: Callable[[str], np.ndarray], wait_s: float = 60.0
    ) -> None:
        self._call, self.actor, self._ids, self.wait_s = call, actor, ids, wait_s
        self.rebuilds = 0

    def _retrying(self, method: str, rebuild: Callable[[], None] | None = None, **params: Any) -> Any:
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                return self._call(self.actor, method, **params)
            except (errors.ActorDied, errors.NotFound) as exc:
                if time.monotonic() > deadline:
                    raise errors.ActorDied(f"draft actor did not come back in {self.wait_s:.0f} s: {exc}") from exc
                if isinstance(exc, errors.ActorDied):
                    time.sleep(0.05)
                    continue
                if rebuild is None:
                    raise
                rebuild()

    def _reopen(self, session: str, blocks: int) -> None:
        self.rebuilds += 1
        self._retrying("open", session=session, token_ids=self._ids(session), blocks=blocks)

    def has(self, session: str) -> bool:
        return self._retrying("has", session=session).has

    def open(self, session: str, token_ids: np.ndarray, blocks: int) -> int:
        return self._retrying("open", session=session, token_ids=np.asarray(token_ids), blocks=blocks).held

    def extend(self, session: str, token_ids: np.ndarray, keep: int, blocks: int) -> int:
        try:
            ids = np.asarray(token_ids)
            return self._retrying("extend", session=session, token_ids=ids, keep=keep, blocks=blocks).held
        except errors.NotFound:
            return self.open(session, token_ids, blocks)

    def propose(
        self,
        sessions: list[str],
        gammas: list[int],
        blocks: list[int],
        temperature: float | list[float] = 0.0,
        seeds: list[int] | None = None,
        widths: list[int] | None = None,
        rates: list[list[float]] | None = None,
        forwards: list[int] | None = None,
    ) -> dict:
        def rebuild() -> None:
            for s, b in zip(sessions, blocks):
                if not self._call(self.actor, "has", session=s).has:
                    self._reopen(s, b)

        proposal = self._retrying(
            "propose",
            rebuild,
            sessions=sessions,
            gammas=gammas,
            blocks=blocks,
            temperature=temperature,
            seeds=seeds,
            widths=widths,
            rates=rates,
            forwards=forwards,
        )
        return to_wire(proposal)

    def accept_batch(
        self,
        sessions: list[str],
        accepted: list[int],
        tokens: list[np.ndarray],
        blocks: list[int],
        paths: list[list[int] | None],
    ) -> list[int]:
        """The step's outcome for every session, in one call."""
        held, live = [0] * len(sessions), []
        for i, (session, n_blocks) in enumerate(zip(sessions, blocks)):
            if n_blocks == 0:
                # The memory actor reclaimed the draft's lease (a dead draft reported between this
                # step's grant and its commit): drop the cache; the next grant asks for a rebuild.
                held[i] = self.close(session)
            else:
                live.append(i)
        while live:
            try:
                answer = self._retrying(
                    "accept_batch",
                    requests=[
                        {
                            "session": sessions[i],
                            "accepted": accepted[i],
                            "tokens": np.asarray(tokens[i]),
                            "blocks": blocks[i],
                            "path": paths[i],
                        }
                        for i in live
                    ],
                ).held
            except errors.NotFound:
                # The draft restarted after proposing (and accepted none of these): the verifier
                # already settled the tokens, so a rebuild from its committed ids is the accepted
                # state of each session it lost; the others are accepted again.
                lost = [i for i in live if not self.has(sessions[i])]
                if not lost:
                    raise
                for i in lost:
                    self._reopen(sessions[i], blocks[i])
                live = [i for i in live if i not in lost]
                continue
            for i, h in zip(live, answer):
                held[i] = h
            break
        return held

    def close(self, session: str) -> int:
        try:
            return self._call(self.actor, "close", session=session).held
        except errors.SpecmemoError:
            return 0
