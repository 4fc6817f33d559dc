"""The kernel's ROUTER socket: its options, the CURVE server in front of it, and its bind."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from specmemo.actors.config import DeploymentConfig

from .run_dir import RunDir


@dataclass(slots=True)
class BoundRouter:
    socket: zmq.Socket
    endpoint: str  # with the port a "tcp://...:0" endpoint was given
    keys: Any = None  # the CURVE KeyRing; None: every peer is an operator
    auth: Any = None  # the ZAP authenticator thread, stopped with the socket
    actor_env: dict[str, str] = field(default_factory=dict)  # what the actors need to connect


def bind_router(config: DeploymentConfig, endpoint: str, run_dir: RunDir) -> BoundRouter:
    """A ROUTER bound to ``endpoint`` (under CURVE when the config names a server key), its
    endpoint published in the run directory."""
    ctx: zmq.Context = zmq.Context.instance()
    r = ctx.socket(zmq.ROUTER)
    r.setsockopt(zmq.ROUTER_MANDATORY, 1)
    r.setsockopt(zmq.LINGER, 500)
    r.setsockopt(zmq.MAXMSGSIZE, config.max_message_bytes)
    r.setsockopt(zmq.SNDHWM, 10000)
    r.setsockopt(zmq.RCVHWM, 10000)
    bound = BoundRouter(r, endpoint)
    if config.curve_server_key:
        _start_curve(ctx, bound, config, run_dir)
    r.bind(endpoint)
    if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
        bound.endpoint = r.getsockopt(zmq.LAST_ENDPOINT).decode()
    run_dir.publish_endpoint(bound.endpoint)
    return bound


def _start_curve(ctx: zmq.Context, bound: BoundRouter, config: DeploymentConfig, run_dir: RunDir) -> None:
    """CURVE server: only peers whose public key is in ``curve_allowed`` may connect."""
    from zmq.auth.thread import ThreadAuthenticator

    from specmemo.protocol.curve import KeyRing, load_pair

    public, secret = load_pair(config.curve_server_key)
    bound.keys = KeyRing.load(config.curve_allowed, config.curve_operators, config.curve_actors, config.curve_actor_key)
    bound.auth = ThreadAuthenticator(ctx)
    bound.auth.start()
    bound.auth.configure_curve_callback(domain="*", credentials_provider=bound.keys)
    router = bound.socket
    router.curve_server = True
    router.curve_publickey = public
    router.curve_secretkey = secret
    server_public = run_dir.publish_server_key(Path(config.curve_server_key).with_suffix(".key"))
    bound.actor_env = {"SPECMEMO_CURVE_KEY": config.curve_actor_key, "SPECMEMO_SERVER_KEY": str(server_public)}
