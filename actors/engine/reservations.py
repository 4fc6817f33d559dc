"""Memory that is not KV, held in the memory manager's budget: a solver's plans and vectors,
reserved per owner and key, evicting idle sessions first as a grant would."""

from __future__ import annotations

from .errors import OverBudget


class Reservations:
    """The reservation methods of :class:`~.manager.MemoryManager` (which defines the budget,
    the live bytes and eviction they use)."""

    budget: int
    _live: int
    _peak: int
    _reserved: dict[str, dict[str, int]]  # owner -> key -> bytes

    def _make_room(self, session: str, extra: int) -> list[str]:
        raise NotImplementedError

    def reserve(self, owner: str, key: str, nbytes: int) -> dict:
        """Hold `nbytes` for `owner` under `key` (again for a held key: its new size). Idle
        sessions are evicted for it as for a grant; OverBudget (nothing changed) if that would
        not do. Answers the bytes held and the sessions evicted."""
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        extra = nbytes - self._reserved.get(owner, {}).get(key, 0)
        try:
            evicted = self._make_room("", extra)
        except OverBudget:
            raise OverBudget(
                f"{owner} needs {nbytes} B for {key!r}: {self.budget - self._live} B free "
                f"of {self.budget}, and the idle sessions cannot cover the rest"
            ) from None
        self._reserved.setdefault(owner, {})[key] = nbytes
        self._live += extra
        self._peak = max(self._peak, self._live)
        return {"reserved": nbytes, "evicted": evicted}

    def unreserve(self, owner: str, key: str) -> int:
        """Give back what `owner` held under `key` (0 if nothing); answers the bytes freed."""
        held = self._reserved.get(owner, {}).pop(key, 0)
        if owner in self._reserved and not self._reserved[owner]:
            del self._reserved[owner]
        self._live -= held
        return held

    def release_reservations(self, owner: str) -> int:
        """Give back everything `owner` held (its actor died); answers the bytes freed."""
        held = sum(self._reserved.pop(owner, {}).values())
        self._live -= held
        return held
