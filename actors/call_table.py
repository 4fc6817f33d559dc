"""The kernel's calls in flight: who called which actor, until when, and whose limit each
counts against, so that a dead actor's calls can be failed and a client's share bounded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: A call is named by its caller's routing id and the caller's correlation id.
CallKey = tuple[bytes, int]


@dataclass(slots=True)
class InFlight:
    actor: str
    deadline: float  # monotonic; inf when the call carries none
    started: float = 0.0
    client: Any = None  # whose limit it counts against (None: an actor's call)


class CallTable:
    def __init__(self) -> None:
        self.calls: dict[CallKey, InFlight] = {}
        self._by_actor: dict[str, set[CallKey]] = {}
        # Calls in flight per client (actors are not counted): by CURVE key when CURVE is on (one
        # key with many connections has one limit), else by connection.
        self._per_client: dict[Any, int] = {}

    def __len__(self) -> int:
        return len(self.calls)

    def __contains__(self, key: CallKey) -> bool:
        return key in self.calls

    def get(self, key: CallKey) -> InFlight | None:
        return self.calls.get(key)

    def of_actor(self, actor: str) -> int:
        """Calls in flight to ``actor``."""
        keys = self._by_actor.get(actor)
        return len(keys) if keys else 0

    def of_client(self, client: Any) -> int:
        """Calls in flight counted against ``client``."""
        return self._per_client.get(client, 0)

    def open(self, key: CallKey, actor: str, deadline: float, now: float, client: Any = None) -> None:
        self.calls[key] = InFlight(actor, deadline, now, client)
        self._by_actor.setdefault(actor, set()).add(key)
        if client is not None:
            self._per_client[client] = self._per_client.get(client, 0) + 1

    def pop(self, key: CallKey) -> InFlight | None:
        """Forget a call (None if it was not in flight)."""
        call = self.calls.pop(key, None)
        if call is None:
            return None
        self._by_actor[call.actor].discard(key)
        if call.client is not None:
            n = self._per_client.get(call.client, 0)
            if n > 1:
                self._per_client[call.client] = n - 1
            else:
                self._per_client.pop(call.client, None)
        return call

    def pop_actor(self, actor: str) -> list[CallKey]:
        """Forget every call in flight to ``actor`` (it died); answers their keys."""
        keys = list(self._by_actor.get(actor, ()))
        for key in keys:
            self.pop(key)
        return keys

    def pop_expired(self, now: float, grace: float) -> list[CallKey]:
        """Forget the calls more than ``grace`` seconds past their deadline."""
        keys = [key for key, call in self.calls.items() if now > call.deadline + grace]
        for key in keys:
            self.pop(key)
        return keys
