"""A local deployment as a child process: `specmemo up` in a temporary run root, waited on until
its actors are ready, stopped, and checked for leftovers. Used by the demo, the soak command,
the tests and the benchmarks, so that each of them starts deployments the same way.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from specmemo.protocol.methods import ActorInfo

#: The deployment `specmemo up`, `demo` and the other commands run when no --config is given.
DEFAULT_CONFIG = Path(__file__).with_name("local.toml")


class LocalDeployment:
    """``specmemo up --config CONFIG`` with its own run root (``SPECMEMO_RUN_ROOT``).

    `config` is TOML text or the path of a file; `name` defaults to the config's deployment name.
    `output`: "log" (a file, `self.log`), "inherit" (this process's stdout and stderr) or
    "discard". `curve` is the client keys (`protocol.curve.client_keys`) for a CURVE deployment:
    used to wait for it and by `client()`. `runner` is the command that runs a Python module
    (e.g. one under a profiler).
    """

    def __init__(
        self,
        config: str | Path,
        name: str | None = None,
        *,
        args: tuple[str, ...] = (),
        output: str = "log",
        prefix: str = "sm",
        curve: dict | None = None,
        runner: tuple[str, ...] = (sys.executable, "-m"),
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        if isinstance(config, Path):
            self.config = config
        else:
            self.config = self.root / "deploy.toml"
            self.config.write_text(config)
        self.name = name or tomllib.loads(self.config.read_text())["deployment"]["name"]
        self.curve = curve
        self.env = {**os.environ, "SPECMEMO_RUN_ROOT": str(self.root / "run")}
        self.log = self.root / "up.log"
        self.args, self.output, self.runner = args, output, runner
        self.endpoint = ""
        self.start()

    def start(self) -> None:
        """Start ``specmemo up`` (again, after a stop or a kill: same run root, same config)."""
        out = {"log": self.log.open("w"), "inherit": None, "discard": subprocess.DEVNULL}[self.output]
        self.proc = subprocess.Popen(
            [*self.runner, "specmemo.deploy.cli", "up", "--config", str(self.config), *self.args],
            stdout=out,
            stderr=subprocess.STDOUT if self.output == "log" else out,
            env=self.env,
        )

    @property
    def run_dir(self) -> Path:
        return self.root / "run" / self.name

    def wait_ready(
        self,
        actors: list[str] | None = None,
        timeout: float = 60.0,
        progress: Callable[[dict[str, str]], None] | None = None,
        accept: tuple[str, ...] = ("ready",),
    ) -> LocalDeployment:
        """Wait until every actor in `actors` (default: every one the kernel lists) is in a state
        of `accept` (an actor that registers itself is "external"); `actors=[]` waits for the
        kernel alone. `progress(states)` hears each change of the actors' states."""
        from specmemo.protocol import Client

        deadline = time.monotonic() + timeout
        shown: dict[str, str] = {}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the deployment exited early (code {self.proc.returncode}):\n{self._log_tail()}")
            endpoint = self.run_dir / "endpoint"
            if endpoint.exists() and endpoint.read_text().strip():
                self.endpoint = endpoint.read_text().strip()
                try:
                    with Client(self.endpoint, timeout=2, curve=self.curve) as c:
                        states = {a.name: str(a.state) for a in c.actors()}
                except Exception:  # not answering yet (or a CURVE handshake in progress)
                    states = None
                if states is not None:
                    if progress is not None and states != shown:
                        progress(states)
                        shown = states
                    wanted = actors if actors is not None else list(states)
                    if all(states.get(a) in accept for a in wanted):
                        return self
            time.sleep(0.1)
        raise TimeoutError(f"actors {actors or 'all'} not ready in {timeout:.0f} s:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        return self.log.read_text()[-4000:] if self.log.exists() else "(its output went to the terminal)"

    def client(self, **kw: Any):
        from specmemo.protocol import Client

        return Client(self.endpoint, **({"curve": self.curve} | kw))

    def actor_pid(self, name: str) -> int:
        with self.client(timeout=5) as c:
            return actor_rows(c)[name].pid

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60.0) -> int:
        """Ask the kernel to stop (SIGINT: it stops every actor); kill it after `timeout`."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def leftovers(self) -> list[Path]:
        """Files the deployment left in its run directory (none after a clean stop)."""
        return sorted(self.run_dir.glob("*")) if self.run_dir.exists() else []

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            try:
                self.stop()
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


def actor_rows(client) -> dict[str, ActorInfo]:
    """The kernel's actor table by actor name (kind, pid, state, restarts ...)."""
    return {a.name: a for a in client.actors()}


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone): the check for processes left behind."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
