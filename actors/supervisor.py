"""OTP-style supervision of actor processes: ordered start, one_for_one restarts, stop ladder.

- Start: an actor is spawned once every actor in its ``after`` list is ready.
- Restart (one_for_one): a dead ``permanent`` actor (or a ``transient`` one that exited
  abnormally) is restarted after a backoff that doubles on quick failures; more than
  ``restart_intensity`` restarts within ``restart_period_s`` escalates: the deployment stops
  with a message naming the actor.
- Stop: reverse start order; each actor is asked (BYE), then SIGTERM, then SIGKILL, each rung
  waiting ``stop_timeout_s``; every child is reaped (no zombies).
- Spawn: the torch actors (:data:`MODEL_KINDS`) are forked by the zygote, which imported
  torch once (see :mod:`specmemo.actors.zygote`); every other actor, and a torch actor that
  sets its own ``env`` or meets a zygote that is down, is a fresh ``python -m
  specmemo.actors.run``. The zygote is stopped last.

A child's state is an :class:`~specmemo.protocol.actor_state.ActorState`: ``waiting`` until it
may start, ``starting`` until it registers, ``ready``, ``restarting`` during a backoff,
``stopped`` when not restarted, ``failed`` when its restarts escalated.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from specmemo.actors.config import ActorConfig, DeploymentConfig
from specmemo.protocol.actor_state import ActorState

from .kinds import MODEL_KINDS
from .prctl import die_with_parent
from .zygote_client import ForkedProcess, ZygoteClient, ZygoteError, how_it_ended


class Escalation(RuntimeError):
    """Restart intensity exceeded: the deployment must stop."""


def forked(cfg: ActorConfig) -> bool:
    """Whether the zygote starts this actor: a torch kind without an ``env`` of its own.

    Native libraries read variables such as ``OMP_NUM_THREADS`` when they are loaded, which
    for a forked actor happened in the zygote: an actor that sets them needs its own exec.
    """
    return cfg.kind in MODEL_KINDS and not cfg.env


@dataclass(slots=True)
class Child:
    cfg: ActorConfig
    proc: subprocess.Popen | ForkedProcess | None = None
    state: ActorState = ActorState.WAITING  # WAITING, STARTING, READY, RESTARTING, STOPPED, FAILED
    restarts: int = 0
    recent: deque = field(default_factory=deque)
    next_start: float = 0.0
    started_at: float = 0.0
    quick_failures: int = 0
    pump: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    def __init__(
        self,
        config: DeploymentConfig,
        endpoint: str,
        *,
        out: TextIO | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.endpoint = endpoint
        self.out = out or sys.stdout
        self.extra_env = extra_env or {}
        self.order = config.start_order()
        self.children = {a.name: Child(a) for a in self.order}
        self._print_lock = threading.Lock()
        # The actor classes the zygote imports (a class's imports do not depend on its config).
        targets = sorted({a.target for a in self.order if forked(a)})
        self.zygote: ZygoteClient | None = None
        if config.zygote and targets:
            # the zygote also loads each forked actor's model once: forks share those weights
            # (a config without `model` means the default pair, so every forked actor is listed)
            models = [[a.kind, a.config] for a in self.order if forked(a)]
            self.zygote = ZygoteClient(targets, dict(os.environ), self.say, self._pump_output, models=models)

    # ---------------------------------------------------------------- logging

    def say(self, name: str, line: str) -> None:
        with self._print_lock:
            self.out.write(f"[{name}] {line.rstrip()}\n")
            self.out.flush()

    def _pump_output(self, name: str, stream: TextIO) -> None:
        for line in stream:
            self.say(name, line)
        stream.close()

    # ---------------------------------------------------------------- start and restart

    def spawn(self, child: Child, now: float) -> None:
        cfg = child.cfg
        argv = [
            "--name",
            cfg.name,
            "--kind",
            cfg.kind,
            "--endpoint",
            self.endpoint,
            "--config",
            json.dumps(cfg.config),
            "--heartbeat",
            str(self.config.heartbeat_s),
            "--heartbeat-misses",
            str(self.config.heartbeat_misses),
            "--max-message-bytes",
            str(self.config.max_message_bytes),
        ]
        if self.config.metrics_port:
            argv += ["--metrics-port", str(self.config.metrics_port + 1 + self.order.index(cfg))]
        env = {**os.environ, **self.extra_env, **cfg.env, "PYTHONUNBUFFERED": "1"}
        child.proc, how = None, ""
        zygote = self.zygote
        if zygote is not None and forked(cfg) and zygote.ready:
            try:
                child.proc, how = zygote.spawn(cfg.name, argv, env), ", forked by the zygote"
            except ZygoteError as exc:
                self.say("kernel", f"the zygote could not fork {cfg.name} ({exc}); starting it with exec")
        if child.proc is None:
            child.proc = subprocess.Popen(
                [sys.executable, "-m", "specmemo.actors.run", *argv],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        child.state = ActorState.STARTING
        child.started_at = now
        child.pump = threading.Thread(target=self._pump_output, args=(cfg.name, child.proc.stdout), daemon=True)
        child.pump.start()
        self.say("kernel", f"started {cfg.name} ({cfg.kind}) pid {child.proc.pid}{how}")

    def tick(self, now: float, ready: set[str]) -> None:
        """Start what may start; kill actors that took too long to become ready.

        While the zygote imports, the actors it will fork wait (unless it keeps failing): a
        second torch import beside its own would slow both down on few cores for nothing.
        """
        if self.zygote is not None:
            self.zygote.tick(now)
        for child in self.children.values():
            if (
                child.state in (ActorState.WAITING, ActorState.RESTARTING)
                and now >= child.next_start
                and all(dep in ready for dep in child.cfg.after)
            ):
                if self.zygote is not None and forked(child.cfg) and self.zygote.worth_waiting:
                    continue
                self.spawn(child, now)
            elif child.state == ActorState.STARTING and now - child.started_at > child.cfg.start_timeout_s:
                self.say(
                    "kernel", f"{child.cfg.name} did not become ready in {child.cfg.start_timeout_s:.0f} s; killing it"
                )
                self.kill(child)

    def mark_ready(self, name: str) -> None:
        child = self.children.get(name)
        if child is not None and child.state == ActorState.STARTING:
            child.state = ActorState.READY

    def reap(self, now: float) -> list[tuple[str, int]]:
        """Collect dead children and schedule their restarts; returns ``(name, returncode)``.

        Raises :class:`Escalation` when an actor exceeds its restart intensity.
        """
        dead = []
        for child in self.children.values():
            if child.proc is None or child.state not in (ActorState.STARTING, ActorState.READY):
                continue
            code = child.proc.poll()
            if code is None:
                continue
            dead.append((child.cfg.name, code))
            self._schedule_restart(child, code, now)
        if self.zygote is not None:
            self.reap_orphans()
        return dead

    def reap_orphans(self) -> None:
        """Reap what the kernel adopted without starting it (as the zygote's subreaper it also
        inherits, say, the orphaned children of a killed actor); poll its own children."""
        own = {c.proc.pid: c.proc for c in self.children.values() if c.proc is not None}
        if self.zygote is not None and self.zygote.proc is not None:
            own[self.zygote.proc.pid] = self.zygote.proc
        for _ in range(64):
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid == 0:
                return
            proc = own.get(info.si_pid)
            if proc is not None:
                proc.poll()  # reaps it and keeps its exit code for reap()
            else:
                os.waitpid(info.si_pid, 0)
                self.say("kernel", f"reaped orphaned process {info.si_pid}")

    def _schedule_restart(self, child: Child, code: int, now: float) -> None:
        cfg = child.cfg
        uptime = now - child.started_at
        how = how_it_ended(code)
        if cfg.restart == "temporary" or (cfg.restart == "transient" and code == 0):
            child.state = ActorState.STOPPED
            self.say("kernel", f"{cfg.name} exited ({how}); not restarted ({cfg.restart})")
            return
        period = self.config.restart_period_s
        while child.recent and now - child.recent[0] > period:
            child.recent.popleft()
        if len(child.recent) >= self.config.restart_intensity:
            child.state = ActorState.FAILED
            raise Escalation(
                f"actor '{cfg.name}' died {len(child.recent) + 1} times within "
                f"{period:.0f} s (last: {how}); stopping the deployment"
            )
        child.recent.append(now)
        child.quick_failures = child.quick_failures + 1 if uptime < period else 0
        delay = min(self.config.backoff_max_s, self.config.backoff_s * (2 ** max(0, child.quick_failures - 1)))
        child.state = ActorState.RESTARTING
        child.restarts += 1
        child.next_start = now + delay
        self.say("kernel", f"{cfg.name} died ({how}) after {uptime:.1f} s; restarting in {delay:.2f} s")

    def kill(self, child: Child) -> None:
        if child.proc is not None and child.alive:
            child.proc.kill()

    # ---------------------------------------------------------------- stop ladder

    def stop_all(self, ask: Callable[[str], None], pump: Callable[[float], object]) -> None:
        """Stop every child in reverse start order: ask, SIGTERM, SIGKILL; reap all."""
        for cfg in reversed(self.order):
            child = self.children[cfg.name]
            proc = child.proc
            if proc is None:
                child.state = ActorState.STOPPED
                continue
            rungs: list[Callable[[], None]] = [
                functools.partial(ask, cfg.name),
                functools.partial(proc.send_signal, signal.SIGTERM),
                proc.kill,
            ]
            for rung in rungs:
                if proc.poll() is not None:
                    break
                try:
                    rung()
                except (ProcessLookupError, OSError):
                    pass
                deadline = time.monotonic() + self.config.stop_timeout_s
                while proc.poll() is None and time.monotonic() < deadline:
                    pump(0.02)
            proc.wait()
            if child.pump is not None:
                child.pump.join(timeout=2)
            child.state = ActorState.STOPPED
        if self.zygote is not None:
            self.zygote.stop()
            self.reap_orphans()
