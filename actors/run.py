"""Entry point of one actor process: ``python -m specmemo.actors.run --kind echo --name echo ...``."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys

import trio

from specmemo.protocol.curve import client_keys

from .kinds import ACTOR_KINDS
from .metrics import serve
from .runtime import ActorRuntime


def load_actor_class(kind: str, target: str | None = None) -> type:
    target = target or ACTOR_KINDS[kind]
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="specmemo-actor")
    p.add_argument("--name", required=True)
    p.add_argument("--kind", required=True)
    p.add_argument("--endpoint", required=True)
    p.add_argument("--config", default="{}", help="actor config as JSON")
    p.add_argument("--heartbeat", type=float, default=1.0)
    p.add_argument("--heartbeat-misses", type=int, default=5)
    p.add_argument("--max-message-bytes", type=int, default=256 * 1024 * 1024)
    p.add_argument(
        "--curve-key",
        default=os.environ.get("SPECMEMO_CURVE_KEY"),
        help="this actor's .key_secret file (tcp deployments with CURVE)",
    )
    p.add_argument("--server-key", default=os.environ.get("SPECMEMO_SERVER_KEY"), help="the kernel's public .key file")
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics here (0 = off)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    config = json.loads(args.config)
    actor = load_actor_class(args.kind, config.get("class"))(args.name, config)
    runtime = ActorRuntime(
        actor,
        args.endpoint,
        heartbeat_s=args.heartbeat,
        heartbeat_misses=args.heartbeat_misses,
        max_message_bytes=args.max_message_bytes,
        curve=client_keys(args.curve_key, args.server_key) if args.curve_key else None,
    )
    if args.metrics_port:
        serve(actor.metrics.registry, args.metrics_port)
    reason = trio.run(runtime.run)
    logging.info("%s stopped: %s", args.name, reason or "done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
