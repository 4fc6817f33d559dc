"""The kernel's registry: every configured or registered actor by name, who may register
under a name (READY), who went away, and the table ``kernel.actors`` answers."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from specmemo.protocol.actor_state import ActorState
from specmemo.protocol.control import ReadyBody
from specmemo.protocol.errors import Unauthorized
from specmemo.protocol.methods import ActorInfo


@dataclass(slots=True)
class Entry:
    """One actor in the registry."""

    name: str
    kind: str
    identity: bytes = b""  # ZeroMQ routing id of its DEALER; empty while not routable
    pid: int = 0
    state: ActorState = ActorState.WAITING  # WAITING, then READY or EXTERNAL, STOPPED once gone
    registered_at: float = 0.0
    last_seen: float = 0.0
    managed: bool = False  # supervised by this kernel (only its own process may register)


class Registry:
    def __init__(self, configured: Iterable[tuple[str, str]], *, managed: bool) -> None:
        """``configured``: (name, kind) of each actor of the deployment; ``managed``: whether
        this kernel starts them (else they register as external actors)."""
        self.actors: dict[str, Entry] = {name: Entry(name, kind, managed=managed) for name, kind in configured}
        self.by_identity: dict[bytes, str] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.actors

    def __getitem__(self, name: str) -> Entry:
        return self.actors[name]

    def get(self, name: str) -> Entry | None:
        return self.actors.get(name)

    def name_of(self, identity: bytes) -> str | None:
        """The actor registered on connection ``identity`` (None: not an actor)."""
        return self.by_identity.get(identity)

    def ready_names(self) -> set[str]:
        return {n for n, e in self.actors.items() if e.identity}

    def routable(self) -> list[Entry]:
        return [e for e in self.actors.values() if e.identity]

    def register(self, identity: bytes, name: str, ready: ReadyBody, now: float, supervised_pid: int | None) -> Entry:
        """Register ``name`` on connection ``identity``; ``supervised_pid``: the pid of the
        process this kernel started under that name (None: not supervised here).

        Raises :class:`Unauthorized` when a live actor on another connection holds the name,
        or the name is supervised here and ``ready`` comes from another process.
        """
        entry = self.actors.get(name)
        if entry is not None and entry.identity and entry.identity != identity:
            raise Unauthorized(f"the name '{name}' is held by a live actor (pid {entry.pid})")
        if entry is not None and entry.managed and supervised_pid != ready.pid:
            raise Unauthorized(f"'{name}' is supervised by this kernel; only its own process may register")
        if entry is None:
            entry = self.actors[name] = Entry(name, ready.kind, managed=False)
        entry.identity, entry.kind, entry.pid = identity, ready.kind, ready.pid
        entry.state = ActorState.READY if entry.managed else ActorState.EXTERNAL
        entry.registered_at = entry.last_seen = now
        self.by_identity[identity] = name
        return entry

    def went_away(self, name: str) -> Entry | None:
        """``name`` is no longer reachable (died, said goodbye, missed heartbeats): not routable
        from now on. Returns its entry (None for a name never known)."""
        entry = self.actors.get(name)
        if entry is None:
            return None
        if entry.identity:
            self.by_identity.pop(entry.identity, None)
            entry.identity = b""
        entry.state = ActorState.STOPPED
        return entry

    def table(
        self,
        now: float,
        inflight: Callable[[str], int],
        child_state: Callable[[str], tuple[ActorState, int, int] | None],
    ) -> list[ActorInfo]:
        """The rows of ``kernel.actors``. ``child_state(name)``: the supervisor's (state, pid,
        restarts) of a supervised actor, None for the others; a registered actor is ``ready``
        whatever its process's state says."""
        rows = []
        for name, e in self.actors.items():
            child = child_state(name)
            if child is not None:
                state, pid, restarts = child
                state = ActorState.READY if e.identity else state
                pid = e.pid or pid
            else:
                state, pid, restarts = e.state, e.pid, 0
            uptime = now - e.registered_at if e.identity else 0.0
            rows.append(
                ActorInfo(
                    name=name,
                    kind=e.kind,
                    pid=pid,
                    state=state,
                    restarts=restarts,
                    uptime_s=round(uptime, 3),
                    inflight=inflight(name),
                )
            )
        return rows
