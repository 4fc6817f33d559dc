"""The kernel: one ROUTER socket, a registry of actors, routing, heartbeats, supervision.

The routing loop is a plain blocking pyzmq loop, not trio: it is the hot path of every call
and does nothing but move frames (see docs/decisions.md). The kernel composes parts with
one job each: :class:`~.registry.Registry` (who is registered under which name),
:class:`~.call_table.CallTable` (calls in flight), :class:`~.routing.Router` (one message's
way), :class:`~.outbox.Outbox` and :class:`~.outbox.Tarpit` (sending), the run directory and
the bound socket (:mod:`.run_dir`, :mod:`.kernel_socket`), and the
:class:`~.supervisor.Supervisor` (the processes). What is left here is the loop, the
control plane (READY, deaths, heartbeats) and the kernel's own methods.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import zmq

from specmemo.actors.config import DeploymentConfig
from specmemo.protocol.control import Notice, NoticeEvent, ReadyBody, kernel_frames, pack_control, unpack_control
from specmemo.protocol.errors import ActorDied, BadRequest, SpecmemoError, Unauthorized, UnknownMethod
from specmemo.protocol.methods import ActorInfo, ActorsReply, KernelMetricsReply, PingReply
from specmemo.protocol.wire import Command, Header, recv_frames

from .call_table import CallTable
from .kernel_socket import bind_router
from .metrics import KernelMetrics, serve
from .outbox import Outbox, Tarpit
from .registry import Registry
from .routing import Router, header_id
from .run_dir import RunDir
from .supervisor import Escalation, Supervisor

# the unbound getter (no attribute lookup on the hot path); EVENTS reads an int
_get: Callable[[Any, int], int] = zmq.backend.Socket.get  # type: ignore[assignment]
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
#: Most seconds between two looks at the children (reap, restart, start) while traffic flows.
HOUSEKEEPING_S = 0.02
#: Calls in flight from which the kernel coalesces (see ``Kernel._pump``).
COALESCE_INFLIGHT = 16
#: Most messages held while routing a batch before they go out (see :class:`Outbox`).
FLUSH_EVERY = 32
#: Seconds past its deadline after which a call nobody answered is forgotten.
SWEEP_GRACE_S = 5.0


class Kernel:
    def __init__(self, config: DeploymentConfig, *, out: TextIO | None = None, spawn: bool = True) -> None:
        self.config = config
        self.out = out or sys.stdout
        self.spawn = spawn
        self.started = time.monotonic()
        self.run_dir = RunDir(config.name)
        self.endpoint = config.endpoint or f"ipc://{self.run_dir.path}/k.sock"
        self.registry = Registry(((a.name, a.kind) for a in config.actors), managed=spawn)
        self.calls = CallTable()
        self._coalesce_s = config.coalesce_us / 1e6
        self.stopping = False
        self.exit_code = 0
        self.exit_message = ""
        self._warned: dict[str, float] = {}
        self.supervisor = Supervisor(config, self.endpoint, out=self.out)
        self.metrics = KernelMetrics()
        self.tarpit = Tarpit(config.overload_delay_ms / 1000)
        self.outbox: Outbox  # set when the socket is bound (_bind)
        self.router: Router

    # ---------------------------------------------------------------- lifecycle

    def say(self, line: str) -> None:
        self.supervisor.say("kernel", line)

    def warn_once(self, key: str, line: str) -> None:
        """Log ``line`` at most once a second per ``key`` (hostile floods must not flood logs)."""
        now = time.monotonic()
        if now - self._warned.get(key, 0.0) >= 1.0:
            self._warned[key] = now
            self.say(line)

    def _bind(self) -> None:
        bound = bind_router(self.config, self.endpoint, self.run_dir)
        self.socket, self.auth, self.endpoint = bound.socket, bound.auth, bound.endpoint
        self.supervisor.endpoint = self.endpoint
        self.supervisor.extra_env.update(bound.actor_env)
        self.outbox = Outbox(self.socket, self.warn_once)
        self.router = Router(self.config, self.registry, self.calls, self.outbox, self.tarpit, self.metrics, self)
        self.router.keys = bound.keys
        if bound.keys is not None:
            self.say(
                f"CURVE on: {len(bound.keys.admitted)} allowed keys ({len(bound.keys.operators)} "
                f"operator, {len(bound.keys.actors)} actor)"
            )

    def run(self) -> int:
        """Serve until SIGINT/SIGTERM or an escalation; returns the process exit code."""
        self.run_dir.claim()
        self._bind()
        if self.config.insecure and self.endpoint.startswith("tcp://") and not self.config.curve_server_key:
            self.say(
                f"WARNING: INSECURE: {self.endpoint} accepts anyone who can reach it, without CURVE "
                "(insecure = true in the config); any peer may call any client method"
            )
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        old_fd = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        old_chld = signal.signal(signal.SIGCHLD, lambda *_: None)
        self.poller = zmq.Poller()
        self.poller.register(self.socket, zmq.POLLIN)
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
            self.poller.unregister(self.socket)
            self.socket.close(linger=200)
            if self.auth is not None:
                self.auth.stop()
            wake_r.close()
            wake_w.close()
            self.run_dir.remove(self.endpoint)
            self.say("stopped")
        return self.exit_code

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stopping = True
        self.exit_message = f"received {signal.Signals(signum).name}"

    def _stop_everything(self) -> None:
        for name in list(self.registry.actors):
            self._fail_inflight(name, "the deployment is stopping")
        self._release_tarpit(float("inf"))

        def ask(name: str) -> None:
            entry = self.registry[name]
            if entry.identity:
                self.outbox.send(kernel_frames(entry.identity, Command.BYE))

        self.supervisor.stop_all(ask, self._pump)

    # ---------------------------------------------------------------- the loop

    def _loop(self) -> None:
        hb = self.config.heartbeat_s
        next_beat = time.monotonic()
        next_sweep = time.monotonic() + 1.0
        if self.spawn:
            self.supervisor.tick(time.monotonic(), self.registry.ready_names())
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
                        self.actor_died(name, f"process exited ({code})")
                except Escalation as exc:
                    self.exit_code, self.exit_message = 1, str(exc)
                    self.stopping = True
                    break
                if self.spawn:
                    self.supervisor.tick(now, self.registry.ready_names())
            if now >= next_beat:
                self._heartbeat(now)
                next_beat = now + hb
            if now >= next_sweep:
                self.calls.pop_expired(now, SWEEP_GRACE_S)
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
        due = self.tarpit.next_due()
        if due is not None:
            timeout_s = min(timeout_s, max(0.0, due - time.monotonic()))
        events = dict(self.poller.poll(int(timeout_s * 1000)))
        if due is not None:
            self._release_tarpit(time.monotonic())
        woken = self.wake_r.fileno() in events
        if woken:
            try:
                while self.wake_r.recv(512):
                    pass
            except BlockingIOError:
                pass
        if self.socket not in events:
            return woken
        outbox, route = self.outbox, self.router.route
        outbox.holding = True
        users: list[str] | None = (
            [] if self.router.keys is not None else None
        )  # CURVE: each message's key (ZAP User-Id)
        try:
            for n in range(2000):
                try:
                    frames = recv_frames(self.socket, zmq.NOBLOCK, small=6, user_ids=users)
                except zmq.Again:
                    break
                try:
                    route(frames, users.pop() if users else None)
                except Exception as exc:  # a routing bug must never take the kernel down
                    self.warn_once("route-bug", f"internal error while routing: {type(exc).__name__}: {exc}")
                if n == 0 and not _get(self.socket, _EVENTS) & _POLLIN:
                    break  # a lone message: sent now, not after a failed receive (bench/wire_micro.py)
                if len(outbox.held) >= FLUSH_EVERY:
                    outbox.flush()
        finally:
            outbox.flush()
            outbox.holding = False
        return woken

    def _release_tarpit(self, now: float) -> None:
        """Send the held refusals that are due by ``now``."""
        for frames in self.tarpit.due(now):
            self.outbox.send(frames)

    # ---------------------------------------------------------------- the control plane

    def ready(self, peer: bytes, frames: list[Any], user: str | None = None) -> None:
        """READY: register the actor named in the route frame on connection ``peer``."""
        call_id = header_id(frames[4])
        keys = self.router.keys
        try:
            if keys is not None and not keys.may_register(user):
                raise Unauthorized(
                    "registering as an actor needs an actor key (curve_actor_key, or one in curve_actors)"
                )
            try:
                name = frames[3].decode()
                body = unpack_control(ReadyBody, frames[5], "READY body")
            except (UnicodeDecodeError, BadRequest) as exc:
                raise BadRequest(
                    f"READY needs a route (the actor name) and a body {{kind, pid, methods}}: {exc}"
                ) from None
            child = self.supervisor.children.get(name)
            self.registry.register(peer, name, body, time.monotonic(), child.pid if child else None)
        except SpecmemoError as exc:
            self.router.reply_error(peer, call_id, exc)
            return
        self.supervisor.mark_ready(name)
        self.outbox.send(kernel_frames(peer, Command.REPLY, call_id))
        self.say(f"{name} is ready (pid {body.pid})")

    def actor_died(self, name: str, reason: str) -> None:
        """``name`` is gone: its calls in flight fail with ActorDied, every other actor is told."""
        if self.registry.went_away(name) is None:
            return
        failed = self._fail_inflight(name, f"actor '{name}' died: {reason}")
        if failed:
            self.say(f"{name} died ({reason}); failed {failed} calls in flight with ActorDied")
        notice = pack_control(Notice(event=NoticeEvent.ACTOR_DIED, name=name))
        for other in self.registry.routable():
            self.outbox.send(kernel_frames(other.identity, Command.NOTICE, body=notice))

    def _fail_inflight(self, name: str, message: str) -> int:
        keys = self.calls.pop_actor(name)
        for client, call_id in keys:
            self.router.reply_error(client, call_id, ActorDied(message, detail={"actor": name}), origin=name)
        return len(keys)

    def _heartbeat(self, now: float) -> None:
        limit = self.config.heartbeat_s * self.config.heartbeat_misses
        for row in self.actor_table():
            self.metrics.inflight.labels(row.name).set(row.inflight)
            self.metrics.restarts.labels(row.name).set(row.restarts)
        for entry in self.registry.routable():
            if now - entry.last_seen > limit:
                self.metrics.count_heartbeat_miss(entry.name)
                self.say(f"{entry.name} missed {self.config.heartbeat_misses} heartbeats")
                child = self.supervisor.children.get(entry.name)
                if child is not None:
                    self.supervisor.kill(child)
                self.actor_died(entry.name, "missed heartbeats")
                continue
            self.outbox.send(kernel_frames(entry.identity, Command.HEARTBEAT))

    # ---------------------------------------------------------------- the kernel's own methods

    def kernel_method(self, peer: bytes, header: Header) -> None:
        if header.method == "ping":
            reply: Any = PingReply(
                uptime_s=time.monotonic() - self.started,
                pid=os.getpid(),
                max_message_bytes=self.config.max_message_bytes,
            )
        elif header.method == "metrics":
            reply = KernelMetricsReply(actors=self.metrics.snapshot())
        elif header.method == "actors":
            reply = ActorsReply(actors=self.actor_table(), endpoint=self.endpoint, deployment=self.config.name)
        else:
            self.router.reply_error(peer, header.id, UnknownMethod(f"the kernel has no method '{header.method}'"))
            return
        self.outbox.send(kernel_frames(peer, Command.REPLY, header.id, pack_control(reply)))

    def actor_table(self) -> list[ActorInfo]:
        def child_state(name: str):
            child = self.supervisor.children.get(name) if self.spawn else None
            return None if child is None else (child.state, child.pid, child.restarts)

        return self.registry.table(time.monotonic(), self.calls.of_actor, child_state)
