"""The kernel's side of the zygote: start it, ask it for actors, watch it, stop it.

:class:`ZygoteClient` owns the zygote process and the ``SOCK_SEQPACKET`` socket to it (see
:mod:`specmemo.actors.zygote` for the protocol). Its states are the actors' vocabulary
(:class:`~specmemo.protocol.actor_state.ActorState`):

- ``waiting``: not started yet (it starts at the first tick);
- ``starting``: importing (seconds); the supervisor defers the actors it would fork, unless
  the zygote failed ``WAIT_FAILURES`` times in a row;
- ``ready``: :meth:`ZygoteClient.spawn` forks actors;
- ``restarting``: it died, refused to fork (more than one thread) or did not become ready; it
  is started again after a delay that doubles, and meanwhile actors are started with exec;
- ``failed``: given up after ``MAX_FAILURES`` failures in a row, or never possible here
  (the kernel could not become a child subreaper);
- ``stopped``: stopped with the deployment.

:class:`ForkedProcess` is what the supervisor keeps for a forked actor: the surface of
:class:`subprocess.Popen` it uses (``pid``, ``poll``, ``wait``, ``send_signal``, ``kill``,
``returncode``, ``stdout``), built on ``waitpid`` since the kernel adopted the actor
without having started it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from specmemo.protocol.actor_state import ActorState

from . import prctl

REPLY_TIMEOUT_S = 2.0  # a fork takes milliseconds; more means the zygote is stuck (routing waits meanwhile)
READY_TIMEOUT_S = 300.0  # importing torch on a loaded machine can take a minute
MODEL_LOAD_S = 600.0  # more time to be ready for each model it loads (one thread)
MAX_FAILURES = 5  # failures in a row before the zygote is given up
WAIT_FAILURES = 2  # from this many failures in a row on, actors do not wait for it


class ZygoteError(RuntimeError):
    """The zygote gave no actor for this request (the message says why)."""


class ForkedProcess:
    """An actor forked by the zygote and adopted by the kernel: ``Popen``'s surface."""

    def __init__(self, pid: int, stdout: TextIO) -> None:
        self.pid = pid
        self.stdout = stdout
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # not ours (never adopted): nothing to wait for
                self.returncode = 255
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
            time.sleep(0.005)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # never signal a pid that was reaped (it may be reused)
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ZygoteClient:
    def __init__(
        self,
        targets: list[str],
        env: dict[str, str],
        say: Callable[[str, str], None],
        pump: Callable[[str, TextIO], None],
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
        models: list[list[Any]] | None = None,
    ) -> None:
        self.targets = targets  # "module:Class" of each actor class to preload
        self.models = models or []  # [kind, config] of each actor whose model it loads once
        self.env = env
        self.say = say
        self.pump = pump
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.pump_thread: threading.Thread | None = None
        self.state = ActorState.WAITING
        self.next_start = 0.0
        self.started_at = 0.0
        self.failures = 0
        if not prctl.become_subreaper():
            self.state = ActorState.FAILED
            self.say("kernel", "cannot become a child subreaper; actors are started with exec")

    @property
    def worth_waiting(self) -> bool:
        """Starting, and not after failing twice in a row: the actors it forks wait for it."""
        return self.state == ActorState.STARTING and self.failures < WAIT_FAILURES

    @property
    def ready(self) -> bool:
        return self.state == ActorState.READY

    # ---------------------------------------------------------------- lifecycle

    def start(self, now: float) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [
            sys.executable,
            "-m",
            "specmemo.actors.zygote",
            "--fd",
            str(theirs.fileno()),
            "--preload",
            json.dumps(self.targets),
            "--models",
            json.dumps(self.models),
        ]
        try:
            self.proc = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
                env={**self.env, "PYTHONUNBUFFERED": "1"},
                pass_fds=[theirs.fileno()],
                start_new_session=True,
                preexec_fn=prctl.die_with_parent,
            )
        finally:
            theirs.close()
        self.sock = ours
        self.state, self.started_at = ActorState.STARTING, now
        self.pump_thread = threading.Thread(target=self.pump, args=("zygote", self.proc.stdout), daemon=True)
        self.pump_thread.start()
        self.say("kernel", f"started the zygote pid {self.proc.pid} (preloading {', '.join(self.targets)})")

    def tick(self, now: float) -> None:
        """Notice readiness, death or a start that takes too long; start again after a backoff."""
        if self.state in (ActorState.WAITING, ActorState.RESTARTING) and now >= self.next_start:
            self.start(now)
        elif self.state == ActorState.STARTING:
            assert self.proc is not None and self.sock is not None, "a starting zygote has both"
            if self.proc.poll() is not None:
                self._failed(now, f"exited ({how_it_ended(self.proc.returncode)}) while preloading")
                return
            try:
                data = self.sock.recv(4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                limit = READY_TIMEOUT_S + MODEL_LOAD_S * len(self.models)
                if now - self.started_at > limit:
                    self._failed(now, f"not ready in {limit:.0f} s")
                return
            if not data:
                self._failed(now, "closed its socket while preloading")
                return
            hello = json.loads(data)
            if hello.get("threads") != 1:
                self._failed(now, f"runs {hello.get('threads')} threads after preloading; forking it would not be safe")
                return
            self.state, self.failures = ActorState.READY, 0
            self.say("kernel", f"zygote ready in {now - self.started_at:.1f} s")
        elif self.state == ActorState.READY and self.proc is not None and self.proc.poll() is not None:
            self._failed(now, f"died ({how_it_ended(self.proc.returncode)})")

    def _failed(self, now: float, why: str) -> None:
        self._close()
        self.failures += 1
        if self.failures >= MAX_FAILURES:
            self.state = ActorState.FAILED
            self.say(
                "kernel", f"zygote {why}; {self.failures} failures in a row, actors are started with exec from now on"
            )
            return
        delay = min(self.backoff_max_s, self.backoff_s * 2 ** (self.failures - 1))
        self.state, self.next_start = ActorState.RESTARTING, now + delay
        self.say("kernel", f"zygote {why}; restarting it in {delay:.1f} s")

    def _close(self) -> None:
        """Close the socket (the zygote exits on EOF), end the process, reap it."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is None:
            return
        for rung in (None, self.proc.terminate, self.proc.kill):
            if rung is not None and self.proc.poll() is None:
                rung()
            try:
                self.proc.wait(2.0)
                break
            except subprocess.TimeoutExpired:
                continue
        if self.pump_thread is not None:
            self.pump_thread.join(timeout=2)

    def stop(self) -> None:
        """Stop for good (the deployment stops): nothing left running, nothing unreaped."""
        self._close()
        self.state = ActorState.STOPPED

    # ---------------------------------------------------------------- forking

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> ForkedProcess:
        """Fork the actor ``specmemo.actors.run.main(argv)`` with ``env``; raises :class:`ZygoteError`."""
        if not self.ready or self.sock is None:
            raise ZygoteError(f"the zygote is {self.state}")
        r, w = os.pipe()
        try:
            request = json.dumps({"name": name, "argv": argv, "env": env, "kernel_pid": os.getpid()})
            self.sock.settimeout(REPLY_TIMEOUT_S)
            try:
                socket.send_fds(self.sock, [request.encode()], [w])
                data = self.sock.recv(4096)
            except OSError as exc:  # includes the timeout
                self._failed(time.monotonic(), f"did not answer ({type(exc).__name__}: {exc})")
                raise ZygoteError("the zygote did not answer") from None
            finally:
                if self.sock is not None:
                    self.sock.settimeout(None)
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
        reply = json.loads(data or b"{}")
        if "pid" not in reply:  # a zygote that refuses once would refuse again: start a new one
            os.close(r)
            why = reply.get("error", "closed its socket")
            self._failed(time.monotonic(), why)
            raise ZygoteError(why)
        return ForkedProcess(int(reply["pid"]), os.fdopen(r, "r", encoding="utf-8", errors="replace"))


def how_it_ended(code: int | None) -> str:
    """A process's exit status in words: "signal SIGKILL" or "exit code 3"."""
    if code is not None and code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"
