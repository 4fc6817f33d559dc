"""A deployment described by one TOML file, mapped onto dataclasses with working defaults: what
the kernel and its supervisor run from (deploy/local.toml is the shipped default).

[deployment]
name = "local"              # run directory /tmp/specmemo-<uid>/<name>
endpoint = ""               # "" = ipc in the run directory; or "tcp://127.0.0.1:5555"

[actors.solver]
kind = "solver"             # which Actor class (see ACTOR_KINDS); defaults to the table name
after = []                  # started after these are ready, stopped before them
[actors.solver.config]      # passed to the actor as a plain dict
threads = 2
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .kinds import ACTOR_KINDS


class ConfigError(ValueError):
    """The deployment config is invalid; the message names the offending key."""


@dataclass(slots=True)
class ActorConfig:
    name: str
    kind: str
    after: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    restart: str = "permanent"  # permanent | transient | temporary (OTP vocabulary)
    start_timeout_s: float = 600.0  # model loads can be slow on first use
    env: dict[str, str] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return self.config.get("class") or ACTOR_KINDS[self.kind]


@dataclass(slots=True)
class DeploymentConfig:
    name: str = "local"
    endpoint: str = ""  # "" -> ipc://<run_dir>/kernel.sock
    heartbeat_s: float = 1.0
    heartbeat_misses: int = 5
    restart_intensity: int = 5  # at most this many restarts of one actor ...
    restart_period_s: float = 30.0  # ... within this many seconds, else the deployment stops
    backoff_s: float = 0.05  # first restart delay, doubled per quick failure
    backoff_max_s: float = 5.0
    stop_timeout_s: float = 5.0  # each rung of the stop ladder waits this long
    max_inflight: int = 4096  # calls in flight to one actor before Overloaded
    max_inflight_per_client: int = 1024  # calls in flight from one client before Overloaded
    overload_delay_ms: int = 50  # that Overloaded is answered this late (a tarpit for floods); 0 = at once
    max_message_bytes: int = 256 * 1024 * 1024
    metrics_port: int = 0  # Prometheus: kernel on this port, n-th actor on port + n; 0 = off
    curve_server_key: str = ""  # the kernel's .key_secret file: turns CURVE on (tcp only)
    curve_allowed: str = ""  # folder of public .key files allowed to connect
    curve_actor_key: str = ""  # .key_secret the spawned actors connect with (may register)
    curve_operators: str = ""  # folder of operator public keys: metrics and every session id
    curve_actors: str = ""  # folder of public keys of actors on other hosts (may register)
    zygote: bool = True  # fork the torch actors from a process that imported torch once
    insecure: bool = False  # allow tcp beyond loopback without CURVE (logged at every start)
    coalesce_us: int = 0  # >= 16 calls in flight: wait this long between kernel passes; 0 = off
    actors: list[ActorConfig] = field(default_factory=list)
    source: str = ""

    def actor(self, name: str) -> ActorConfig:
        for a in self.actors:
            if a.name == name:
                return a
        raise KeyError(name)

    def start_order(self) -> list[ActorConfig]:
        """Actors in dependency order (each after everything in its ``after``)."""
        by_name = {a.name: a for a in self.actors}
        order: list[ActorConfig] = []
        state: dict[str, int] = {}

        def visit(a: ActorConfig, path: list[str]) -> None:
            if state.get(a.name) == 2:
                return
            if state.get(a.name) == 1:
                raise ConfigError(f"dependency cycle: {' -> '.join(path + [a.name])}")
            state[a.name] = 1
            for dep in a.after:
                visit(by_name[dep], path + [a.name])
            state[a.name] = 2
            order.append(a)

        for a in self.actors:
            visit(a, [])
        return order


_DEPLOYMENT_KEYS = {
    "name",
    "endpoint",
    "heartbeat_s",
    "heartbeat_misses",
    "restart_intensity",
    "restart_period_s",
    "backoff_s",
    "backoff_max_s",
    "stop_timeout_s",
    "max_inflight",
    "max_inflight_per_client",
    "overload_delay_ms",
    "max_message_bytes",
    "metrics_port",
    "curve_server_key",
    "curve_allowed",
    "curve_actor_key",
    "curve_operators",
    "curve_actors",
    "zygote",
    "coalesce_us",
    "insecure",
}
_ACTOR_KEYS = {"kind", "after", "config", "restart", "start_timeout_s", "env"}


def _check_model_config(source: str, name: str, kind: str, config: dict) -> None:
    # the engine settings a model actor would otherwise refuse only once its model is loaded
    def count(key: str) -> bool:
        value = config.get(key, 0)
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    if not count("prefix_tokens"):
        raise ConfigError(f"{source}: [actors.{name}] prefix_tokens must be an integer >= 0 (0: no prefix store)")
    if not isinstance(config.get("converted_cache", True), bool):
        raise ConfigError(f"{source}: [actors.{name}] converted_cache must be true or false")
    rows = config.get("vocab_rows", "auto")
    if kind == "draft" and rows != "auto" and not (count("vocab_rows") and rows % 16 == 0):
        raise ConfigError(f'{source}: [actors.{name}] vocab_rows must be "auto" or a multiple of 16 >= 0 (0: all)')


def load_config(path: str | Path) -> DeploymentConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return parse_config(data, source=str(path))


def parse_config(data: dict[str, Any], source: str = "<dict>") -> DeploymentConfig:
    dep = dict(data.get("deployment", {}))
    unknown = set(dep) - _DEPLOYMENT_KEYS
    if unknown:
        raise ConfigError(f"{source}: unknown [deployment] keys {sorted(unknown)}")
    cfg = DeploymentConfig(**dep, source=source)
    if not (isinstance(cfg.coalesce_us, int) and 0 <= cfg.coalesce_us <= 100_000):
        raise ConfigError(f"{source}: coalesce_us must be an integer from 0 (off) to 100000")
    actors = data.get("actors", {})
    if not isinstance(actors, dict):
        raise ConfigError(f"{source}: [actors] must be a table of tables")
    for name, table in actors.items():
        table = dict(table)
        unknown = set(table) - _ACTOR_KEYS
        if unknown:
            raise ConfigError(f"{source}: unknown keys {sorted(unknown)} in [actors.{name}]")
        kind = table.pop("kind", name)
        if kind not in ACTOR_KINDS and "class" not in table.get("config", {}):
            raise ConfigError(
                f"{source}: [actors.{name}] has unknown kind '{kind}' (known: {', '.join(sorted(ACTOR_KINDS))})"
            )
        if name == "kernel" or not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"{source}: '{name}' is not a valid actor name")
        cfg.actors.append(ActorConfig(name=name, kind=kind, **table))
    names = {a.name for a in cfg.actors}
    for a in cfg.actors:
        missing = [d for d in a.after if d not in names]
        if missing:
            raise ConfigError(f"{source}: [actors.{a.name}] is after unknown actors {missing}")
        if a.restart not in ("permanent", "transient", "temporary"):
            raise ConfigError(f"{source}: [actors.{a.name}] restart must be permanent, transient or temporary")
        if a.kind == "http":
            from specmemo.actors.http import check_bind

            try:
                check_bind(a.config)
            except ValueError as exc:
                raise ConfigError(f"{source}: [actors.{a.name}] {exc}") from None
        if a.kind in ("draft", "verifier"):
            _check_model_config(source, a.name, a.kind, a.config)
    if cfg.curve_server_key:
        base = Path(source).parent if source != "<dict>" else Path(".")
        for key in ("curve_server_key", "curve_allowed", "curve_actor_key"):
            value = getattr(cfg, key)
            if not value:
                raise ConfigError(f"{source}: curve_server_key needs {key} too")
            path = Path(value) if Path(value).is_absolute() else base / value
            if not path.exists():
                raise ConfigError(f"{source}: {key} = {value!r} does not exist")
            setattr(cfg, key, str(path))
        for key in ("curve_operators", "curve_actors"):  # optional role folders
            value = getattr(cfg, key)
            if value:
                path = Path(value) if Path(value).is_absolute() else base / value
                if not path.is_dir():
                    raise ConfigError(f"{source}: {key} = {value!r} is not a folder")
                setattr(cfg, key, str(path))
        if not cfg.endpoint.startswith("tcp://"):
            raise ConfigError(f"{source}: CURVE needs a tcp endpoint (ipc is protected by the 0700 run directory)")
    check_endpoint(cfg)
    cfg.start_order()
    return cfg


def check_endpoint(cfg: DeploymentConfig) -> None:
    """Refuse (ConfigError) a tcp endpoint beyond loopback without CURVE, unless `insecure = true`."""
    if (
        cfg.endpoint.startswith("tcp://")
        and not cfg.curve_server_key
        and not _loopback(cfg.endpoint)
        and cfg.insecure is not True
    ):
        raise ConfigError(
            f"{cfg.source}: endpoint {cfg.endpoint} would let anyone who reaches it call anything: "
            "set curve_server_key (docs/security.md), bind 127.0.0.1, or set insecure = true"
        )


def _loopback(endpoint: str) -> bool:
    """Whether a tcp endpoint binds a loopback address only."""
    host = endpoint[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
