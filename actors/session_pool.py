"""The verifier sessions an HTTP gateway keeps for prefix reuse, with the conversation each holds.

The OpenAI API is stateless: each request carries the whole conversation. A request continues in
the idle session whose conversation shares the longest prefix of messages with it, so that the
verifier reuses the KV of what it has seen; idle sessions beyond the pool are closed least
recently used first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class _Pooled:
    conversation: list[dict[str, str]] = field(default_factory=list)  # prompts and replies it holds
    busy: bool = False
    last_used: float = 0.0


class SessionPool:
    """The verifier sessions this gateway keeps, with the conversation each holds.

    `pick` answers the idle session whose conversation shares the longest prefix of messages with
    a request (None when none shares even one message); `finish` records the conversation a turn
    left there; `forget` drops a session the verifier closed. Synchronous and testable alone."""

    def __init__(self, max_sessions: int) -> None:
        assert max_sessions >= 1
        self.max_sessions = max_sessions
        self.sessions: dict[str, _Pooled] = {}

    def pick(self, messages: list[dict[str, str]]) -> str | None:
        best, best_len = None, 0
        for sid, s in self.sessions.items():
            if s.busy:
                continue
            shared = 0
            for a, b in zip(s.conversation, messages):
                if a != b:
                    break
                shared += 1
            if shared > best_len or (
                shared == best_len and best is not None and shared and s.last_used > self.sessions[best].last_used
            ):
                best, best_len = sid, shared
        return best if best_len > 0 else None

    def take(self, session: str) -> None:
        s = self.sessions.setdefault(session, _Pooled())
        s.busy, s.last_used = True, time.monotonic()

    def finish(self, session: str, conversation: list[dict[str, str]]) -> None:
        s = self.sessions.get(session)
        if s is not None:
            s.conversation, s.busy, s.last_used = conversation, False, time.monotonic()

    def forget(self, session: str) -> None:
        self.sessions.pop(session, None)

    def surplus(self) -> list[str]:
        """Idle sessions to close, least recently used first, so that one more fits."""
        idle = sorted((s.last_used, sid) for sid, s in self.sessions.items() if not s.busy)
        extra = len(self.sessions) + 1 - self.max_sessions
        return [sid for _, sid in idle[: max(0, extra)]]
