"""Where a local deployment lives: its 0700 run directory and the endpoint file in it."""

from __future__ import annotations

import os
from pathlib import Path

ENDPOINT_FILE = "endpoint"
PID_FILE = "kernel.pid"


def runtime_root() -> Path:
    """Parent of every local deployment's run directory (``$SPECMEMO_RUN_ROOT`` overrides).

    Kept short on purpose: an ipc path must stay under about 107 bytes.
    """
    env = os.environ.get("SPECMEMO_RUN_ROOT")
    return Path(env) if env else Path(f"/tmp/specmemo-{os.getuid()}")


def run_dir(deployment: str) -> Path:
    return runtime_root() / deployment


def make_run_dir(path: Path) -> Path:
    """Create ``path`` (and the root) with mode 0700, refusing a directory others can enter."""
    for p in (path.parent, path):
        p.mkdir(mode=0o700, exist_ok=True)
        st = p.stat()
        if st.st_uid != os.getuid():
            raise PermissionError(f"run directory {p} belongs to uid {st.st_uid}, not to us")
        if st.st_mode & 0o077:
            os.chmod(p, 0o700)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def local_deployments() -> list[tuple[str, str]]:
    """``(deployment name, endpoint)`` of every local deployment whose kernel is alive."""
    found: list[tuple[str, str]] = []
    root = runtime_root()
    if not root.is_dir():
        return found
    for d in sorted(root.iterdir()):
        try:
            endpoint = (d / ENDPOINT_FILE).read_text().strip()
            pid = int((d / PID_FILE).read_text().strip())
        except (OSError, ValueError):
            continue
        if endpoint and _alive(pid):
            found.append((d.name, endpoint))
    return found


def find_endpoint(endpoint: str | None = None) -> str:
    """``endpoint`` if given, else ``$SPECMEMO_ENDPOINT``, else the one live local deployment."""
    if endpoint:
        return endpoint
    env = os.environ.get("SPECMEMO_ENDPOINT")
    if env:
        return env
    found = local_deployments()
    if not found:
        raise ConnectionError("no running local deployment found (start one with `specmemo up`, or pass --endpoint)")
    if len(found) > 1:
        names = ", ".join(f"{n} at {e}" for n, e in found)
        raise ConnectionError(f"several local deployments are running ({names}); pass --endpoint")
    return found[0][1]
