"""How to write an actor: a class with ``rpc_<method>`` handlers around a synchronous core.

    class EchoActor(Actor):
        kind = "echo"

        def rpc_echo(self, req: EchoRequest, call: Call) -> EchoReply:
            return EchoReply(data=req.data)

        async def rpc_sleep(self, req: SleepRequest, call: Call) -> SleepReply:
            await trio.sleep(req.seconds)
            return SleepReply(slept=req.seconds)

A handler written as a plain ``def`` runs inline on the actor's event loop as its request is
read, with no task and no cancel scope: the fast path, for work of microseconds that never
blocks (a lookup, an echo, a counter). An ``async def`` handler gets a task of its own, its
deadline as a cancel scope, and honours cancels; anything that waits or computes for long
belongs there. A handler receives the validated request message (see :mod:`specmemo.protocol.methods`)
and a :class:`Call` (id, deadline, caller route). It returns an instance of the method's reply
class (anything else is answered ``Internal``); a streaming handler is an async generator
yielding chunks. Exceptions become typed error
replies: a :class:`SpecmemoError` as itself, a class listed in ``errors`` as its mapped code,
anything else as ``Internal`` with the traceback. The actor keeps serving either way.

Blocking work (a model forward, a C kernel) goes through :meth:`Actor.run_sync`, which runs
it in a worker thread, one at a time per actor, so heartbeats and cancels keep flowing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import trio

from specmemo.protocol.client import AsyncCaller
from specmemo.protocol.errors import SpecmemoError
from specmemo.protocol.kernel_messages import ActorMetricsReply

from .metrics import ActorMetrics

R = TypeVar("R")


@dataclass(slots=True)
class Call:
    """One request being served."""

    id: int
    method: str
    route: bytes  # the caller's routing id, where the reply goes
    deadline: float  # trio.current_time() deadline; inf when none
    scope: trio.CancelScope | None = None
    cancelled_by_peer: bool = False
    started: float = field(default=0.0)

    def time_left(self) -> float:
        return self.deadline - trio.current_time()


class Actor:
    """Base class of every actor. Subclasses set ``kind`` and define ``rpc_<method>`` handlers."""

    kind: ClassVar[str] = ""
    #: Domain exceptions of the core mapped to protocol error classes.
    errors: ClassVar[dict[type[BaseException], type[SpecmemoError]]] = {}
    #: ``async def`` requests served at once; more get ``Overloaded`` at once (plain ``def``
    #: handlers finish as they are read, so they are never refused).
    max_concurrency: ClassVar[int] = 256

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        self.name = name
        self.config = config
        self.peers: AsyncCaller = AsyncCaller()  # replaced by the runtime with a connected one
        self._core_lock = trio.Lock()
        self.trio_token: trio.lowlevel.TrioToken | None = None  # set in on_start by actors that call from threads
        self.metrics = ActorMetrics(name)

    async def on_start(self) -> None:
        """Load what the actor needs (models, plans). Called before the actor registers."""

    def rpc_metrics(self, req: Any, call: Call) -> ActorMetricsReply:
        """Every actor's built-in method: its domain gauges."""
        return ActorMetricsReply(values=self.metrics.values())

    async def on_registered(self) -> None:
        """Called once the kernel knows this process as an actor, before `background`: the place
        for calls only actors may make (a memory lease, say), which the kernel refuses before."""

    async def background(self) -> None:
        """A task that runs beside the handlers from registration until the actor stops."""

    async def on_stop(self) -> None:
        """Release resources. Called once, after the last request was answered or failed."""

    async def on_peer_died(self, name: str) -> None:
        """Another actor died (the kernel told us). Memory leases use this."""

    async def run_sync(self, fn: Callable[..., R], *args: Any) -> R:
        """Run blocking ``fn(*args)`` in a worker thread, serialised with the actor's other core calls."""
        async with self._core_lock:
            return await trio.to_thread.run_sync(fn, *args)

    def call_from_thread(self, actor: str, method: str, /, *, timeout: float, **params: Any) -> Any:
        """From a worker thread (a core call under :meth:`run_sync`): one call to another actor
        through this actor's socket, made in its trio loop; blocks the thread until the reply."""
        return trio.from_thread.run(
            lambda: self.peers.call(actor, method, timeout=timeout, **params), trio_token=self.trio_token
        )

    def map_error(self, exc: BaseException) -> SpecmemoError | None:
        if isinstance(exc, SpecmemoError):
            return exc
        for cls, mapped in self.errors.items():
            if isinstance(exc, cls):
                # the domain class travels in the detail: a caller may tell (say) a prompt
                # longer than the context from another invalid input
                return mapped(str(exc), origin=self.name, detail={"reason": type(exc).__name__})
        return None
