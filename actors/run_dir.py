"""The deployment's run directory: who runs it (the kernel's pid), where to reach it (the
endpoint), the kernel's public CURVE key; claimed at start, removed at stop."""

from __future__ import annotations

import os
from pathlib import Path

from specmemo.protocol.endpoint import ENDPOINT_FILE, PID_FILE, make_run_dir, run_dir

SERVER_KEY_FILE = "server.key"


class RunDir:
    def __init__(self, deployment: str, path: Path | None = None) -> None:
        self.deployment = deployment
        self.path = make_run_dir(path if path is not None else run_dir(deployment))

    def claim(self) -> None:
        """Take the directory for this process; RuntimeError while another live kernel holds it.
        What a dead kernel left behind is removed."""
        pid_file = self.path / PID_FILE
        try:
            other = int(pid_file.read_text())
            os.kill(other, 0)
        except (OSError, ValueError):
            other = 0
        if other and other != os.getpid():
            raise RuntimeError(
                f"deployment '{self.deployment}' is already running (kernel pid {other}, run directory {self.path})"
            )
        for stale in self.path.iterdir():
            stale.unlink(missing_ok=True)
        pid_file.write_text(str(os.getpid()))

    def publish_endpoint(self, endpoint: str) -> None:
        (self.path / ENDPOINT_FILE).write_text(endpoint)

    def publish_server_key(self, public_key_file: Path) -> Path:
        """Copy the kernel's public key beside the endpoint (for the actors it starts)."""
        target = self.path / SERVER_KEY_FILE
        target.write_text(public_key_file.read_text())
        return target

    def remove(self, endpoint: str) -> None:
        if endpoint.startswith("ipc://"):
            Path(endpoint[6:]).unlink(missing_ok=True)
        for name in (ENDPOINT_FILE, PID_FILE, SERVER_KEY_FILE):
            (self.path / name).unlink(missing_ok=True)
        try:
            self.path.rmdir()
        except OSError:
            pass
