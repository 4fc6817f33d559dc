"""The kernel's routing of one message: checks, role, limits, then forward (or a typed error).

It reads the command and route frames and the small header (for the correlation id, so that
the kernel can fail calls in flight when an actor dies); it never decodes a body. What is not
routing (READY, an actor leaving, the kernel's own methods) goes to the kernel, its
``control``.
"""

from __future__ import annotations

import errno
import random
import time
from typing import Any, Protocol

import msgpack
import zmq

from specmemo.actors.config import DeploymentConfig
from specmemo.protocol.control import forwarded_frames, kernel_frames
from specmemo.protocol.errors import (
    ActorDied,
    BadRequest,
    Internal,
    MessageTooLarge,
    Overloaded,
    SpecmemoError,
    Unauthorized,
    UnknownActor,
)
from specmemo.protocol.method_table import may_call, role_of
from specmemo.protocol.wire import FINAL_COMMANDS, Command, Header, check_magic, frames_size, parse_command

from .call_table import CallKey, CallTable
from .metrics import KernelMetrics
from .outbox import Outbox, Tarpit
from .registry import Registry


class Control(Protocol):
    """What the router hands to the kernel."""

    def ready(self, peer: bytes, frames: list[Any], user: str | None) -> None: ...
    def actor_died(self, name: str, reason: str) -> None: ...
    def kernel_method(self, peer: bytes, header: Header) -> None: ...


class Router:
    def __init__(
        self,
        config: DeploymentConfig,
        registry: Registry,
        calls: CallTable,
        outbox: Outbox,
        tarpit: Tarpit,
        metrics: KernelMetrics,
        control: Control,
    ) -> None:
        self.config = config
        self.registry = registry
        self.calls = calls
        self.outbox = outbox
        self.tarpit = tarpit
        self.metrics = metrics
        self.control = control
        self.keys: Any = None  # the CURVE KeyRing; None: every peer is an operator

    def route(self, frames: list[Any], user: str | None = None) -> None:
        """Route one message; ``user`` is the CURVE key (z85) it came with, None without CURVE."""
        peer = frames[0]
        if len(frames) < 6:
            self.reply_error(
                peer, 0, BadRequest(f"a message has at least 5 frames after the routing id, got {len(frames) - 1}")
            )
            return
        try:
            check_magic(frames[1])
            command = parse_command(frames[2])
        except SpecmemoError as exc:
            self.reply_error(peer, header_id(frames[4]), exc)
            return
        size = frames_size(frames)
        if size > self.config.max_message_bytes:
            self.reply_error(
                peer,
                header_id(frames[4]),
                MessageTooLarge(
                    f"message of {size} bytes exceeds the limit of {self.config.max_message_bytes}",
                    detail={"size": size, "limit": self.config.max_message_bytes},
                ),
            )
            return
        name = self.registry.name_of(peer)
        if name is not None:
            self.registry[name].last_seen = time.monotonic()
        if command == Command.REQUEST:
            self._request(peer, frames, user)
        elif command in (Command.REPLY, Command.ERROR, Command.STREAM, Command.END):
            if name is None:
                self.outbox.warn_once("unregistered", f"dropped a {command.name} from an unregistered peer")
                return
            self._from_actor(peer, name, command, frames)
        elif command == Command.CANCEL:
            self._cancel(peer, frames)
        elif command in (Command.HEARTBEAT, Command.BYE) and name is None:
            # actors' commands, from a peer that is not one (a client)
            self.reply_error(
                peer, header_id(frames[4]), BadRequest(f"{command.name} is an actor's command; register first (READY)")
            )
        elif command == Command.HEARTBEAT:
            pass  # last_seen is updated above
        elif command == Command.READY:
            self.control.ready(peer, frames, user)
        elif command == Command.BYE and name is not None:
            self.control.actor_died(name, "it said goodbye")
        else:
            self.reply_error(peer, header_id(frames[4]), BadRequest(f"{command.name} is not accepted by the kernel"))

    def _refuse(self, peer: bytes, header: Header, kind: str, route: str, user: str | None) -> bool:
        """Answer Unauthorized (True) when this peer may not call ``kind.method``: checked
        before routing, so no handler runs. (On every request: a registered actor, who may call
        anything, costs one set lookup, before any method table is consulted.)"""
        if peer in self.registry.by_identity:
            return False
        need = role_of(kind, header.method)
        # Not an actor: without CURVE an operator (ipc admits only our own user); with CURVE
        # the folder of its key decides.
        role = "operator" if self.keys is None else self.keys.role(user)
        if need == "client" or may_call(role, need):
            return False
        why = "may be called by actors only" if need == "actor" else "needs an operator key (curve_operators)"
        self.reply_error(
            peer,
            header.id,
            Unauthorized(f"{kind}.{header.method} {why}", detail={"actor": route, "method": header.method}),
        )
        return True

    def _request(self, peer: bytes, frames: list[Any], user: str | None = None) -> None:
        try:
            header = Header.unpack(frames[4])
            route = frames[3].decode()
        except SpecmemoError as exc:
            self.reply_error(peer, header_id(frames[4]), exc)
            return
        except UnicodeDecodeError:
            self.reply_error(peer, 0, BadRequest("route frame is not UTF-8"))
            return
        if route == "kernel":
            if not self._refuse(peer, header, "kernel", route, user):
                self.control.kernel_method(peer, header)
            return
        entry = self.registry.get(route)
        if entry is None:
            self.reply_error(
                peer,
                header.id,
                UnknownActor(
                    f"no actor named '{route}' (known: {', '.join(sorted(self.registry.actors)) or 'none'})",
                    detail={"actor": route},
                ),
            )
            return
        if self._refuse(peer, header, entry.kind, route, user):
            return
        if not entry.identity:
            self.reply_error(
                peer,
                header.id,
                ActorDied(
                    f"actor '{route}' is not running right now (state {entry.state}); retry later",
                    detail={"actor": route, "state": entry.state},
                ),
            )
            return
        inflight = self.calls.of_actor(route)
        if inflight >= self.config.max_inflight:
            self.reply_error(
                peer, header.id, Overloaded(f"actor '{route}' has {inflight} calls in flight", detail={"actor": route})
            )
            return
        client = None if peer in self.registry.by_identity else (user or peer)  # whose limit
        if client is not None and self.calls.of_client(client) >= self.config.max_inflight_per_client:
            # One client cannot take every slot of an actor from the others. The refusal is
            # answered late (a tarpit), jittered (0.5-1.5x) so that connections refused
            # together do not come back together: a synchronized burst would delay everyone's
            # calls queued behind it.
            frames = self.error_frames(
                peer,
                header.id,
                Overloaded(
                    f"this client has {self.calls.of_client(client)} calls in flight "
                    f"(max_inflight_per_client = {self.config.max_inflight_per_client}"
                    + (", counted per key)" if user else ")"),
                    detail={"limit": "max_inflight_per_client"},
                ),
            )
            if not self.tarpit.hold(frames, time.monotonic(), 0.5 + random.random()):
                self.outbox.send(frames)
            return
        key = (peer, header.id)
        if key in self.calls:
            self.reply_error(peer, header.id, BadRequest(f"call id {header.id} is already in flight"))
            return
        # In flight from now on: the send may be held until the end of the batch.
        now = time.monotonic()
        deadline = now + header.deadline_ms / 1000 if header.deadline_ms else float("inf")
        self.calls.open(key, route, deadline, now, client)
        self.metrics.count_request(route, header.method)
        identity = entry.identity
        self.outbox.send(
            forwarded_frames(frames, identity, peer), lambda exc: self._not_forwarded(exc, key, route, identity)
        )

    def _not_forwarded(self, exc: zmq.ZMQError, key: CallKey, route: str, identity: bytes) -> None:
        """A request could not be handed to its actor: the caller gets the reason."""
        if not self.end_call(key, observe=False):
            return  # already answered (the actor was found dead meanwhile)
        entry = self.registry[route]
        peer, call_id = key
        if exc.errno == errno.EAGAIN:
            self.reply_error(peer, call_id, Overloaded(f"actor '{route}' is not reading its queue"))
        elif exc.errno == errno.EHOSTUNREACH:
            if entry.identity == identity:  # not a newer process that registered meanwhile
                self.control.actor_died(route, "its socket went away")
            self.reply_error(peer, call_id, ActorDied(f"actor '{route}' went away"))
        else:
            self.reply_error(peer, call_id, Internal(f"the kernel could not forward the call: {exc}"))

    def _from_actor(self, peer: bytes, name: str, command: Command, frames: list[Any]) -> None:
        client = frames[3]
        final = command in FINAL_COMMANDS
        call_id = header_id(frames[4]) if final or command == Command.STREAM else 0
        self.outbox.send(
            forwarded_frames(frames, client, name.encode()),
            lambda exc: self._not_delivered(exc, peer, name, command, (client, call_id)),
        )
        if command == Command.ERROR:
            self.metrics.count_error(name, _error_name(frames[5]))
        if final:
            self.end_call((client, call_id))

    def _not_delivered(self, exc: zmq.ZMQError, actor: bytes, name: str, command: Command, key: CallKey) -> None:
        """A reply or chunk could not reach its caller (gone, or not reading): drop it, and
        ask the actor to stop a stream nobody reads."""
        self.outbox.warn_once(
            "client-gone", f"dropped a {command.name} from {name}: its caller is gone or not reading ({exc})"
        )
        if command not in FINAL_COMMANDS and self.end_call(key):
            client, call_id = key
            self.outbox.send(kernel_frames(actor, Command.CANCEL, call_id, route=client))

    def end_call(self, key: CallKey, observe: bool = True) -> bool:
        """Forget a call in flight (False if it was not); ``observe`` its latency."""
        call = self.calls.pop(key)
        if call is None:
            return False
        if observe:
            self.metrics.observe(call.actor, time.monotonic() - call.started)
        return True

    def _cancel(self, peer: bytes, frames: list[Any]) -> None:
        call = self.calls.get((peer, header_id(frames[4])))
        if call is None or frames[3] != call.actor.encode():
            return  # a cancel for a call that finished (or never was), or naming another actor: nothing to do
        entry = self.registry[call.actor]
        if entry.identity:
            self.outbox.send(forwarded_frames(frames, entry.identity, peer))

    # ---------------------------------------------------------------- errors

    def reply_error(self, peer: bytes, call_id: int, exc: SpecmemoError, origin: str = "kernel") -> None:
        self.outbox.send(self.error_frames(peer, call_id, exc, origin))

    def error_frames(self, peer: bytes, call_id: int, exc: SpecmemoError, origin: str = "kernel") -> list[Any]:
        """The ERROR message answering call ``call_id`` of ``peer`` (counted in the metrics)."""
        exc.origin = exc.origin or origin
        self.metrics.count_error(exc.origin, exc.name)
        return kernel_frames(peer, Command.ERROR, call_id, msgpack.packb(exc.to_wire()))


def _error_name(frame: Any) -> str:
    try:
        body = msgpack.unpackb(frame)
        return str(body.get("name", "Unknown"))[:40]
    except Exception:
        return "Malformed"


def header_id(frame: Any) -> int:
    """The call id of a header frame, 0 when it has none the caller could decode."""
    try:
        header = msgpack.unpackb(frame)
        call_id = header.get("id", 0)
        ok = isinstance(call_id, int) and not isinstance(call_id, bool) and 0 <= call_id < 2**64
        return call_id if ok else 0  # answer with id 0 what the caller could not decode
    except Exception:
        return 0
