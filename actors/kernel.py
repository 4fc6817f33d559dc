"""The kernel: one ROUTER socket, a registry of actors, routing, heartbeats, supervision.

The routing loop is a plain blocking pyzmq loop, not trio: it is the hot path of every call
and does nothing but move frames (see docs/decisions.md). It reads the command and route
frames and the small header (for the correlation id, so that it can fail calls in flight
when an actor dies); it never decodes a body.
"""
from __future__ import annotations

import errno
import heapq
import itertools
import os
import random
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import msgpack
import zmq

from specmemo.deploy.config import DeploymentConfig
from specmemo.protocol.endpoint import ENDPOINT_FILE, PID_FILE, make_run_dir, run_dir
from specmemo.protocol.errors import (ActorDied, BadRequest, Internal, MessageTooLarge, Overloaded,
                                      SpecmemoError, Unauthorized, UnknownActor, UnknownMethod)
from specmemo.protocol.methods import ActorInfo, ActorsReply, PingReply, may_call, role_of
from specmemo.protocol.schema import to_wire
from specmemo.protocol.wire import (COMMAND_BYTES, FINAL_COMMANDS, MAGIC, Command, Header,
                                    check_magic, frames_size, parse_command, recv_frames,
                                    send_frames)

from .metrics import KernelMetrics, serve
from .supervisor import Escalation, Supervisor

KERNEL = b"kernel"
_get = zmq.backend.Socket.get
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
_ERROR = COMMAND_BYTES[Command.ERROR]
_REPLY = COMMAND_BYTES[Command.REPLY]
#: Most seconds between two looks at the children (reap, restart, start) while traffic flows.
HOUSEKEEPING_S = 0.02
#: Calls in flight from which the kernel coalesces (see ``Kernel._pump``).
COALESCE_INFLIGHT = 16
#: Most messages held while routing a batch before they go out (see ``Kernel._send``).
FLUSH_EVERY = 32
#: Most refusals held back at once (``Kernel._tarpit``); past it they are answered at once.
TARPIT_MAX = 65536


@dataclass(slots=True)
class Entry:
    """One actor in the registry."""

    name: str
    kind: str
    identity: bytes = b""          # ZeroMQ routing id of its DEALER; empty while not routable
    pid: int = 0
    state: str = "configured"      # configured | ready | down | external
    registered_at: float = 0.0
    last_seen: float = 0.0
    managed: bool = False
    inflight: set = field(default_factory=set)


@dataclass(slots=True)
class InFlight:
    actor: str
    deadline: float                # monotonic; inf when the call carries none
    started: float = 0.0
    client: Any = None             # whose limit it counts against (None: an actor's call)


class Kernel:
    def __init__(self, config: DeploymentConfig, *, out: TextIO | None = None,
                 spawn: bool = True) -> None:
        self.config = config
        self.out = out or sys.stdout
        self.spawn = spawn
        self.started = time.monotonic()
        self.run_dir = make_run_dir(run_dir(config.name))
        self.endpoint = config.endpoint or f"ipc://{self.run_dir}/k.sock"
        self.actors: dict[str, Entry] = {a.name: Entry(a.name, a.kind, managed=spawn)
                                         for a in config.actors}
        self.by_identity: dict[bytes, str] = {}
        self.calls: dict[tuple[bytes, int], InFlight] = {}
        # Calls in flight per client (actors are not counted): by CURVE key when CURVE is on (one
        # key with many connections has one limit), else by connection.
        self.per_client: dict[Any, int] = {}
        self.keys = None                            # the CURVE KeyRing; None: every peer is an operator
        self._coalesce_s = config.coalesce_us / 1e6
        self._outbox: list[tuple[list[Any], Any]] = []   # sends held while routing a batch
        self._holding = False
        self.stopping = False
        self.exit_code = 0
        self.exit_message = ""
        self._warned: dict[str, float] = {}
        # Overloaded replies to clients past their own limit, sent about `overload_delay_ms`
        # late: a heap of (due, sequence, frames).
        self._tarpit: list[tuple[float, int, list[Any]]] = []
        self._tarpit_seq = itertools.count()
        self._overload_delay_s = config.overload_delay_ms / 1000
        self.supervisor = Supervisor(config, self.endpoint, out=self.out)
        self.metrics = KernelMetrics()

    # ---------------------------------------------------------------- lifecycle

    def say(self, line: str) -> None:
        self.supervisor.say("kernel", line)

    def warn_once(self, key: str, line: str) -> None:
        """Log ``line`` at most once a second per ``key`` (hostile floods must not flood logs)."""
        now = time.monotonic()
        if now - self._warned.get(key, 0.0) >= 1.0:
            self._warned[key] = now
            self.say(line)

    def _claim_run_dir(self) -> None:
        pid_file = self.run_dir / PID_FILE
        try:
            other = int(pid_file.read_text())
            os.kill(other, 0)
        except (OSError, ValueError):
            other = 0
        if other and other != os.getpid():
            raise RuntimeError(f"deployment '{self.config.name}' is already running (kernel pid "
                               f"{other}, run directory {self.run_dir})")
        for stale in self.run_dir.iterdir():
            stale.unlink(missing_ok=True)
        pid_file.write_text(str(os.getpid()))

    def _bind(self) -> None:
        ctx = zmq.Context.instance()
        r = ctx.socket(zmq.ROUTER)
        r.setsockopt(zmq.ROUTER_MANDATORY, 1)
        r.setsockopt(zmq.LINGER, 500)
        r.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_bytes)
        r.setsockopt(zmq.SNDHWM, 10000)
        r.setsockopt(zmq.RCVHWM, 10000)
        if self.config.curve_server_key:
            self._start_curve(ctx, r)
        r.bind(self.endpoint)
        if self.endpoint.startswith("tcp://") and self.endpoint.endswith(":0"):
            self.endpoint = r.getsockopt(zmq.LAST_ENDPOINT).decode()
            self.supervisor.endpoint = self.endpoint
        self.router = r
        (self.run_dir / ENDPOINT_FILE).write_text(self.endpoint)

    def _start_curve(self, ctx: zmq.Context, router: zmq.Socket) -> None:
        """CURVE server: only peers whose public key is in ``curve_allowed`` may connect."""
        from zmq.auth.thread import ThreadAuthenticator

        from specmemo.protocol.curve import KeyRing, load_pair
        public, secret = load_pair(self.config.curve_server_key)
        self.keys = KeyRing.load(self.config.curve_allowed, self.config.curve_operators,
                                 self.config.curve_actors, self.config.curve_actor_key)
        self.auth = ThreadAuthenticator(ctx)
        self.auth.start()
        self.auth.configure_curve_callback(domain="*", credentials_provider=self.keys)
        router.curve_server = True
        router.curve_publickey = public
        router.curve_secretkey = secret
        server_public = self.run_dir / "server.key"
        server_public.write_text(Path(self.config.curve_server_key).with_suffix(".key").read_text())
        self.supervisor.extra_env.update(SPECMEMO_CURVE_KEY=self.config.curve_actor_key,
                                         SPECMEMO_SERVER_KEY=str(server_public))
        self.say(f"CURVE on: {len(self.keys.admitted)} allowed keys ({len(self.keys.operators)} "
                 f"operator, {len(self.keys.actors)} actor)")

    def run(self) -> int:
        """Serve until SIGINT/SIGTERM or an escalation; returns the process exit code."""
        self._claim_run_dir()
        self._bind()
        if self.config.insecure and self.endpoint.startswith("tcp://") and not self.config.curve_server_key:
            self.say(f"WARNING: INSECURE: {self.endpoint} accepts anyone who can reach it, without CURVE "
                     "(insecure = true in the config); any peer may call any client method")
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        old_fd = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        old_chld = signal.signal(signal.SIGCHLD, lambda *_: None)
        self.poller = zmq.Poller()
        self.poller.register(self.router, zmq.POLLIN)
        self.poller.register(wake_r.fileno(), zmq.POLLIN)
        self.wake_r = wake_r
        self.say(f"deployment '{self.config.name}' listening on {self.endpoint} (pid {os.getpid()})")
        if self.config.metrics_port:
            serve(self.metrics.registry, self.config.metrics_port)
            self.say(f"metrics on http://127.0.0.1:{self.config.metrics_port}/metrics (actors on the next ports)")
        try:
            self._loop()
        finally:
            self.say("stopping" + (f": {self.exit_message}" if self.exit_message else ""))
            self._stop_everything()
            signal.set_wakeup_fd(old_fd)
            for s, h in handlers.items():
                signal.signal(s, h)
            signal.signal(signal.SIGCHLD, old_chld)
            self.poller.unregister(self.router)
            self.router.close(linger=200)
            if getattr(self, "auth", None) is not None:
                self.auth.stop()
            wake_r.close()
            wake_w.close()
            self._remove_run_dir()
            self.say("stopped")
        return self.exit_code

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stopping = True
        self.exit_message = f"received {signal.Signals(signum).name}"

    def _remove_run_dir(self) -> None:
        if self.endpoint.startswith("ipc://"):
            Path(self.endpoint[6:]).unlink(missing_ok=True)
        for name in (ENDPOINT_FILE, PID_FILE, "server.key"):
            (self.run_dir / name).unlink(missing_ok=True)
        try:
            self.run_dir.rmdir()
        except OSError:
            pass

    def _stop_everything(self) -> None:
        for entry in self.actors.values():
            self._fail_inflight(entry, "the deployment is stopping")
        self._release_tarpit(float("inf"))

        def ask(name: str) -> None:
            entry = self.actors[name]
            if entry.identity:
                self._send([entry.identity, MAGIC, COMMAND_BYTES[Command.BYE], KERNEL,
                                  Header().pack(), b"\xc0"])

        self.supervisor.stop_all(ask, self._pump)

    # ---------------------------------------------------------------- the loop

    def _loop(self) -> None:
        hb = self.config.heartbeat_s
        next_beat = time.monotonic()
        next_sweep = time.monotonic() + 1.0
        if self.spawn:
            self.supervisor.tick(time.monotonic(), self._ready_names())
        next_care, skipped = 0.0, False
        while not self.stopping:
            # After a pass that skipped the children, wait no longer than until they are due.
            woken = self._pump(min(0.1, max(0.0, next_care - time.monotonic())) if skipped else 0.1)
            now = time.monotonic()
            # Reaping and starting look at every child (a waitpid each): after a signal (SIGCHLD
            # wakes the loop), else every HOUSEKEEPING_S, not after every batch of messages.
            skipped = not (woken or now >= next_care)
            if not skipped:
                next_care = now + HOUSEKEEPING_S
                try:
                    for name, code in self.supervisor.reap(now):
                        self._actor_died(name, f"process exited ({code})")
                except Escalation as exc:
                    self.exit_code, self.exit_message = 1, str(exc)
                    self.stopping = True
                    break
                if self.spawn:
                    self.supervisor.tick(now, self._ready_names())
            if now >= next_beat:
                self._heartbeat(now)
                next_beat = now + hb
            if now >= next_sweep:
                self._sweep(now)
                next_sweep = now + 1.0

    def _pump(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for traffic, then route everything queued.

        Returns whether a signal (SIGCHLD, SIGINT, SIGTERM) woke the loop.
        """
        if len(self.calls) >= COALESCE_INFLIGHT and self._coalesce_s:
            # Coalescing (``coalesce_us``, off by default; like a NIC's interrupt moderation):
            # with many calls in flight each message can cost the kernel a wake-up of its own,
            # CPU that a small machine takes from the actors. Sleeping a little lets a batch
            # gather; a single call in flight never waits. bench/coalesce.py, docs/benchmarks.md.
            time.sleep(self._coalesce_s)
        if self._tarpit:
            timeout_s = min(timeout_s, max(0.0, self._tarpit[0][0] - time.monotonic()))
        events = dict(self.poller.poll(int(timeout_s * 1000)))
        if self._tarpit:
            self._release_tarpit(time.monotonic())
        woken = self.wake_r.fileno() in events
        if woken:
            try:
                while self.wake_r.recv(512):
                    pass
            except BlockingIOError:
                pass
        if self.router not in events:
            return woken
        self._holding = True
        users = [] if self.keys is not None else None   # CURVE: each message's key (ZAP User-Id)
        try:
            for n in range(2000):
                try:
                    frames = recv_frames(self.router, zmq.NOBLOCK, small=6, user_ids=users)
                except zmq.Again:
                    break
                try:
                    self._route(frames, users.pop() if users else None)
                except Exception as exc:  # a routing bug must never take the kernel down
                    self.warn_once("route-bug", f"internal error while routing: {type(exc).__name__}: {exc}")
                if n == 0 and not _get(self.router, _EVENTS) & _POLLIN:
                    break   # a lone message: sent now, not after a failed receive (bench/wire_micro.py)
                if len(self._outbox) >= FLUSH_EVERY:
                    self._flush()
        finally:
            self._flush()
            self._holding = False
        return woken

    def _ready_names(self) -> set[str]:
        return {n for n, e in self.actors.items() if e.state == "ready"}

    # ---------------------------------------------------------------- routing

    def _route(self, frames: list[Any], user: str | None = None) -> None:
        """Route one message; ``user`` is the CURVE key (z85) it came with, None without CURVE."""
        peer = frames[0]
        if len(frames) < 6:
            self._reply_error(peer, 0, BadRequest(f"a message has at least 5 frames after the "
                                                  f"routing id, got {len(frames) - 1}"))
            return
        try:
            check_magic(frames[1])
            command = parse_command(frames[2])
        except SpecmemoError as exc:
            self._reply_error(peer, _header_id(frames[4]), exc)
            return
        size = frames_size(frames)
        if size > self.config.max_message_bytes:
            self._reply_error(peer, _header_id(frames[4]), MessageTooLarge(
                f"message of {size} bytes exceeds the limit of {self.config.max_message_bytes}",
                detail={"size": size, "limit": self.config.max_message_bytes}))
            return
        name = self.by_identity.get(peer)
        if name is not None:
            self.actors[name].last_seen = time.monotonic()
        if command == Command.REQUEST:
            self._request(peer, frames, user)
        elif command in (Command.REPLY, Command.ERROR, Command.STREAM, Command.END):
            if name is None:
                self.warn_once("unregistered", f"dropped a {command.name} from an unregistered peer")
                return
            self._from_actor(peer, name, command, frames)
        elif command == Command.CANCEL:
            self._cancel(peer, frames)
        elif command in (Command.HEARTBEAT, Command.BYE) and name is None:
            # actors' commands, from a peer that is not one (a client)
            self._reply_error(peer, _header_id(frames[4]),
                              BadRequest(f"{command.name} is an actor's command; register first (READY)"))
        elif command == Command.HEARTBEAT:
            pass                                   # last_seen is updated above
        elif command == Command.READY:
            self._ready(peer, frames, user)
        elif command == Command.BYE:
            self._actor_died(name, "it said goodbye")
        else:
            self._reply_error(peer, _header_id(frames[4]),
                              BadRequest(f"{command.name} is not accepted by the kernel"))

    def _refuse(self, peer: bytes, header: Header, kind: str, route: str, user: str | None) -> bool:
        """Answer Unauthorized (True) when this peer may not call ``kind.method``: checked
        before routing, so no handler runs. (On every request: a registered actor, who may call
        anything, costs one set lookup, before any method table is consulted.)"""
        if peer in self.by_identity:
            return False
        need = role_of(kind, header.method)
        # Not an actor: without CURVE an operator (ipc admits only our own user); with CURVE
        # the folder of its key decides.
        role = "operator" if self.keys is None else self.keys.role(user)
        if need == "client" or may_call(role, need):
            return False
        why = ("may be called by actors only" if need == "actor"
               else "needs an operator key (curve_operators)")
        self._reply_error(peer, header.id, Unauthorized(f"{kind}.{header.method} {why}",
                                                        detail={"actor": route, "method": header.method}))
        return True

    def _request(self, peer: bytes, frames: list[Any], user: str | None = None) -> None:
        try:
            header = Header.unpack(frames[4])
            route = frames[3].decode()
        except SpecmemoError as exc:
            self._reply_error(peer, _header_id(frames[4]), exc)
            return
        except UnicodeDecodeError:
            self._reply_error(peer, 0, BadRequest("route frame is not UTF-8"))
            return
        if route == "kernel":
            if not self._refuse(peer, header, "kernel", route, user):
                self._kernel_method(peer, header)
            return
        entry = self.actors.get(route)
        if entry is None:
            self._reply_error(peer, header.id, UnknownActor(
                f"no actor named '{route}' (known: {', '.join(sorted(self.actors)) or 'none'})",
                detail={"actor": route}))
            return
        if self._refuse(peer, header, entry.kind, route, user):
            return
        if not entry.identity:
            self._reply_error(peer, header.id, ActorDied(
                f"actor '{route}' is not running right now (state {entry.state}); retry later",
                detail={"actor": route, "state": entry.state}))
            return
        if len(entry.inflight) >= self.config.max_inflight:
            self._reply_error(peer, header.id, Overloaded(
                f"actor '{route}' has {len(entry.inflight)} calls in flight", detail={"actor": route}))
            return
        client = None if peer in self.by_identity else (user or peer)   # whose limit
        if client is not None and self.per_client.get(client, 0) >= self.config.max_inflight_per_client:
            # One client cannot take every slot of an actor from the others. The refusal is
            # answered late (a tarpit): a client that sends again at once, as a flood does, is
            # slowed to a call per delay per connection instead of costing the kernel a round
            # trip every few microseconds (tests/test_security_curve.py, the flood).
            frames = self._error_frames(peer, header.id, Overloaded(
                f"this client has {self.per_client[client]} calls in flight "
                f"(max_inflight_per_client = {self.config.max_inflight_per_client}"
                + (", counted per key)" if user else ")"),
                detail={"limit": "max_inflight_per_client"}))
            if self._overload_delay_s and len(self._tarpit) < TARPIT_MAX:
                # Jittered (0.5-1.5x), so that connections refused together do not come back
                # together: a synchronized burst would delay everyone's calls queued behind it.
                due = time.monotonic() + self._overload_delay_s * (0.5 + random.random())
                heapq.heappush(self._tarpit, (due, next(self._tarpit_seq), frames))
            else:
                self._send(frames)
            return
        key = (peer, header.id)
        if key in self.calls:
            self._reply_error(peer, header.id, BadRequest(f"call id {header.id} is already in flight"))
            return
        # In flight from now on: the send may be held until the end of the batch.
        now = time.monotonic()
        deadline = now + header.deadline_ms / 1000 if header.deadline_ms else float("inf")
        self.calls[key] = InFlight(route, deadline, now, client)
        if client is not None:
            self.per_client[client] = self.per_client.get(client, 0) + 1
        entry.inflight.add(key)
        self.metrics.count_request(route, header.method)
        identity = entry.identity
        self._send([identity, frames[1], frames[2], peer, *frames[4:]],
                   lambda exc: self._not_forwarded(exc, key, route, identity))

    def _not_forwarded(self, exc: zmq.ZMQError, key: tuple[bytes, int], route: str,
                       identity: bytes) -> None:
        """A request could not be handed to its actor: the caller gets the reason."""
        if not self._end_call(key, observe=False):
            return   # already answered (the actor was found dead meanwhile)
        entry = self.actors[route]
        peer, call_id = key
        if exc.errno == errno.EAGAIN:
            self._reply_error(peer, call_id, Overloaded(f"actor '{route}' is not reading its queue"))
        elif exc.errno == errno.EHOSTUNREACH:
            if entry.identity == identity:   # not a newer process that registered meanwhile
                self._actor_died(route, "its socket went away")
            self._reply_error(peer, call_id, ActorDied(f"actor '{route}' went away"))
        else:
            self._reply_error(peer, call_id, Internal(f"the kernel could not forward the call: {exc}"))

    def _from_actor(self, peer: bytes, name: str, command: Command, frames: list[Any]) -> None:
        client = frames[3]
        final = command in FINAL_COMMANDS
        call_id = _header_id(frames[4]) if final or command == Command.STREAM else 0
        self._send([client, frames[1], frames[2], name.encode(), *frames[4:]],
                   lambda exc: self._not_delivered(exc, peer, name, command, (client, call_id)))
        if command == Command.ERROR:
            self.metrics.count_error(name, _error_name(frames[5]))
        if final:
            self._end_call((client, call_id))

    def _not_delivered(self, exc: zmq.ZMQError, actor: bytes, name: str, command: Command,
                       key: tuple[bytes, int]) -> None:
        """A reply or chunk could not reach its caller (gone, or not reading): drop it, and
        ask the actor to stop a stream nobody reads."""
        self.warn_once("client-gone", f"dropped a {command.name} from {name}: its caller is gone "
                                      f"or not reading ({exc})")
        if command not in FINAL_COMMANDS and self._end_call(key):
            client, call_id = key
            self._send([actor, MAGIC, COMMAND_BYTES[Command.CANCEL], client,
                        Header(id=call_id).pack(), b"\xc0"])

    def _end_call(self, key: tuple[bytes, int], observe: bool = True) -> bool:
        """Forget a call in flight (False if it was not); ``observe`` its latency."""
        call = self._pop_call(key)
        if call is None:
            return False
        self.actors[call.actor].inflight.discard(key)
        if observe:
            self.metrics.observe(call.actor, time.monotonic() - call.started)
        return True

    def _pop_call(self, key: tuple[bytes, int]) -> InFlight | None:
        call = self.calls.pop(key, None)
        if call is not None and call.client is not None:
            n = self.per_client.get(call.client, 0)
            if n > 1:
                self.per_client[call.client] = n - 1
            else:
                self.per_client.pop(call.client, None)
        return call

    def _cancel(self, peer: bytes, frames: list[Any]) -> None:
        call_id = _header_id(frames[4])
        call = self.calls.get((peer, call_id))
        if call is None or frames[3] != call.actor.encode():
            return  # a cancel for a call that finished (or never was), or naming another actor: nothing to do
        entry = self.actors[call.actor]
        if entry.identity:
            self._send([entry.identity, frames[1], frames[2], peer, *frames[4:]])

    def _ready(self, peer: bytes, frames: list[Any], user: str | None = None) -> None:
        call_id = _header_id(frames[4])
        if self.keys is not None and not self.keys.may_register(user):
            self._reply_error(peer, call_id, Unauthorized(
                "registering as an actor needs an actor key (curve_actor_key, or one in curve_actors)"))
            return
        try:
            name = frames[3].decode()
            body = msgpack.unpackb(frames[5])
            kind, pid = str(body["kind"]), int(body["pid"])
        except Exception:
            self._reply_error(peer, call_id, BadRequest("READY needs a route (the actor name) and a "
                                                        "body {kind, pid, methods}"))
            return
        entry = self.actors.get(name)
        now = time.monotonic()
        if entry is not None and entry.identity and entry.identity != peer:
            self._reply_error(peer, call_id, Unauthorized(
                f"the name '{name}' is held by a live actor (pid {entry.pid})"))
            return
        if entry is not None and entry.managed:
            child = self.supervisor.children.get(name)
            if child is None or child.pid != pid:
                self._reply_error(peer, call_id, Unauthorized(
                    f"'{name}' is supervised by this kernel; only its own process may register"))
                return
        if entry is None:
            entry = self.actors[name] = Entry(name, kind, managed=False)
        entry.identity, entry.kind, entry.pid = peer, kind, pid
        entry.state, entry.registered_at, entry.last_seen = "ready", now, now
        self.by_identity[peer] = name
        self.supervisor.mark_ready(name)
        self._send([peer, MAGIC, _REPLY, KERNEL, Header(id=call_id).pack(), b"\xc0"])
        self.say(f"{name} is ready (pid {pid})")

    # ---------------------------------------------------------------- deaths and liveness

    def _actor_died(self, name: str, reason: str) -> None:
        entry = self.actors.get(name)
        if entry is None:
            return
        if entry.identity:
            self.by_identity.pop(entry.identity, None)
            entry.identity = b""
        entry.state = "down"
        failed = self._fail_inflight(entry, f"actor '{name}' died: {reason}")
        if failed:
            self.say(f"{name} died ({reason}); failed {failed} calls in flight with ActorDied")
        notice = msgpack.packb({"event": "actor_died", "name": name})
        for other in self.actors.values():
            if other.identity:
                self._send([other.identity, MAGIC, COMMAND_BYTES[Command.NOTICE], KERNEL,
                                  Header().pack(), notice])

    def _fail_inflight(self, entry: Entry, message: str) -> int:
        keys = list(entry.inflight)
        for client, call_id in keys:
            self._pop_call((client, call_id))
            self._reply_error(client, call_id, ActorDied(message, detail={"actor": entry.name}),
                              origin=entry.name)
        entry.inflight.clear()
        return len(keys)

    def _heartbeat(self, now: float) -> None:
        limit = self.config.heartbeat_s * self.config.heartbeat_misses
        beat = [MAGIC, COMMAND_BYTES[Command.HEARTBEAT], KERNEL, Header().pack(), b"\xc0"]
        for row in self.actor_table():
            self.metrics.inflight.labels(row.name).set(row.inflight)
            self.metrics.restarts.labels(row.name).set(row.restarts)
        for entry in list(self.actors.values()):
            if not entry.identity:
                continue
            if now - entry.last_seen > limit:
                self.metrics.count_heartbeat_miss(entry.name)
                self.say(f"{entry.name} missed {self.config.heartbeat_misses} heartbeats")
                child = self.supervisor.children.get(entry.name)
                if child is not None:
                    self.supervisor.kill(child)
                self._actor_died(entry.name, "missed heartbeats")
                continue
            self._send([entry.identity, *beat])

    def _sweep(self, now: float) -> None:
        """Forget calls long past their deadline (the callee answered nothing we could route)."""
        grace = 5.0
        for key, call in list(self.calls.items()):
            if now > call.deadline + grace:
                self._pop_call(key)
                self.actors[call.actor].inflight.discard(key)

    # ---------------------------------------------------------------- the kernel's own methods

    def _kernel_method(self, peer: bytes, header: Header) -> None:
        if header.method == "ping":
            body: Any = to_wire(PingReply(uptime_s=time.monotonic() - self.started, pid=os.getpid(),
                                          max_message_bytes=self.config.max_message_bytes))
        elif header.method == "metrics":
            body = {"actors": self.metrics.snapshot()}
        elif header.method == "actors":
            body = to_wire(ActorsReply(actors=self.actor_table(), endpoint=self.endpoint,
                                       deployment=self.config.name))
        else:
            self._reply_error(peer, header.id, UnknownMethod(f"the kernel has no method '{header.method}'"))
            return
        self._send([peer, MAGIC, _REPLY, KERNEL, Header(id=header.id).pack(), msgpack.packb(body)])

    def actor_table(self) -> list[ActorInfo]:
        now = time.monotonic()
        rows = []
        for name, e in self.actors.items():
            child = self.supervisor.children.get(name)
            if child is not None and self.spawn:
                state = "ready" if e.state == "ready" else child.state
                pid, restarts = (e.pid or child.pid), child.restarts
            else:
                state, pid, restarts = ("external" if e.identity else e.state), e.pid, 0
            uptime = now - e.registered_at if e.identity else 0.0
            rows.append(ActorInfo(name=name, kind=e.kind, pid=pid, state=state, restarts=restarts,
                                  uptime_s=round(uptime, 3), inflight=len(e.inflight)))
        return rows

    # ---------------------------------------------------------------- sending

    def _reply_error(self, peer: bytes, call_id: int, exc: SpecmemoError, origin: str = "kernel") -> None:
        self._send(self._error_frames(peer, call_id, exc, origin))

    def _error_frames(self, peer: bytes, call_id: int, exc: SpecmemoError, origin: str = "kernel") -> list[Any]:
        """The ERROR message answering call ``call_id`` of ``peer`` (counted in the metrics)."""
        exc.origin = exc.origin or origin
        self.metrics.count_error(exc.origin, exc.name)
        return [peer, MAGIC, _ERROR, KERNEL, Header(id=call_id).pack(), msgpack.packb(exc.to_wire())]

    def _release_tarpit(self, now: float) -> None:
        """Send the held refusals that are due by ``now``."""
        while self._tarpit and self._tarpit[0][0] <= now:
            self._send(heapq.heappop(self._tarpit)[2])

    def _send(self, frames: list[Any], on_fail: Any = None) -> None:
        """Send ``frames``; what cannot be delivered goes to ``on_fail(exc)``, or is dropped
        with one log line a second.

        While a batch is being routed the message is held and goes out with the others at the
        end of the batch (or every ``FLUSH_EVERY``), in order. Sent one by one, each message
        can wake libzmq's I/O thread and the peer on its own, and on a small machine those
        wake-ups cost more CPU than the routing itself (docs/decisions.md).
        """
        self._outbox.append((frames, on_fail))
        if not self._holding:
            self._flush()

    def _flush(self) -> None:
        """Send the held messages in order; what a failure handler sends joins the queue."""
        box, holding = self._outbox, self._holding
        self._holding = True
        try:
            i = 0
            while i < len(box):
                frames, on_fail = box[i]
                i += 1
                try:
                    try:
                        send_frames(self.router, frames, zmq.NOBLOCK)
                    except zmq.ZMQError as exc:
                        if on_fail is None:
                            self.warn_once(f"send-{exc.errno}", f"could not deliver a message: {exc}")
                        else:
                            on_fail(exc)
                except Exception as bug:   # as in _pump: a bug never takes the kernel down
                    self.warn_once("route-bug", f"internal error while sending: "
                                                f"{type(bug).__name__}: {bug}")
        finally:
            box.clear()
            self._holding = holding


def _error_name(frame: Any) -> str:
    try:
        body = msgpack.unpackb(frame)
        return str(body.get("name", "Unknown"))[:40]
    except Exception:
        return "Malformed"


def _header_id(frame: Any) -> int:
    try:
        header = msgpack.unpackb(frame)
        call_id = header.get("id", 0)
        ok = isinstance(call_id, int) and not isinstance(call_id, bool) and 0 <= call_id < 2**64
        return call_id if ok else 0   # answer with id 0 what the caller could not decode
    except Exception:
        return 0
